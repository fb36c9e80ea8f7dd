"""make image-check: the Dockerfile built with podman and run as the Helm chart runs it.

No registry is reachable here, so the base image is made from Debian's packages
(deploy/checks/debian_base.py) and imported under the name the Dockerfile's FROM resolves to,
with a PYTHON_VERSION build argument matching its python3. The build mounts the host's CA bundle
over Debian's, so that pip trusts the HTTPS proxy, without putting it in the image. The image then
runs with the chart's security settings (read from values.yaml: uid and gid, read-only root
filesystem, capabilities dropped, no privilege escalation), /tmp as a tmpfs and --network host,
and must: print --help; run as uid 10001 by default; serve /health and /ready; relay a streamed
completion from a fake upstream chunk by chunk; run with no capability; refuse writes to its root
filesystem but not to /tmp; and exit 0 on SIGTERM. All podman state lives in a temporary folder
that is removed afterwards. Needs root (rootful podman).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.endpoints import NotUp, free_port, wait_until_up
from bench.load.timed_stream import sdk_client, stream_chat
from bench.runner.processes import processes
from deploy import CHART, ROOT, ROUTER_CONFIG
from deploy.checks.debian_base import apt_mirror, base_tarball
from deploy.checks.host import CheckError, ensure_installed, tail
from deploy.checks.podman import Podman, private_mount_namespace
from deploy.checks.report import Report, run_check

DOCKERFILE = ROOT / "Dockerfile"
IMAGE = "localhost/vllm-session-router:check"
BASE = "localhost/debian-base:check"
CONTAINER = "vllm-session-router-check"
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UPSTREAM_CHUNKS = 5
CHUNK_DELAY = 0.1  # seconds between the fake upstream's chunks: a relay that buffers would show
STOP_TIMEOUT = 30


def from_images(dockerfile: str, build_args: Mapping[str, str]) -> list[str]:
    """The images the Dockerfile's FROM lines name (not its own stages), fully qualified as
    podman resolves them with docker.io as the registry of short names."""
    text = re.sub(r"\\\n", " ", dockerfile)
    args: dict[str, str] = {}  # the ARGs before the first FROM, which FROM lines may use
    stages: set[str] = set()
    images: list[str] = []
    global_scope = True
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "ARG" and global_scope:
            name, _, default = words[1].partition("=")
            args[name] = build_args.get(name, default.strip("\"'"))
        elif instruction == "FROM":
            global_scope = False
            rest = [word for word in words[1:] if not word.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), rest[0])
            if image not in stages and image != "scratch":
                images.append(qualified(image))
            if len(rest) >= 3 and rest[1].upper() == "AS":
                stages.add(rest[2])
    return list(dict.fromkeys(images))


def qualified(image: str) -> str:
    """`python:3.11-slim` -> `docker.io/library/python:3.11-slim`, as Docker reads short names."""
    name, _, tag = image.partition(":") if "@" not in image else (image, "", "")
    first = name.split("/")[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    return f"{name}:{tag}" if tag else (name if "@" in name else f"{name}:latest")


def chart_run_flags(values: Mapping[str, Any]) -> list[str]:
    """podman run flags for the router container's security settings in the chart's values."""
    pod = values["router"]["podSecurityContext"]
    container = values["router"]["securityContext"]
    flags = ["--user", f"{pod['runAsUser']}:{pod['runAsGroup']}"]
    if container.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    flags += [f"--cap-drop={cap}" for cap in container.get("capabilities", {}).get("drop", [])]
    if container.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt=no-new-privileges"]
    return [*flags, "--tmpfs=/tmp:size=64m"]  # the chart's emptyDir (sizeLimit 64Mi) on /tmp


class Container:
    """A running container as `wait_until_up` sees a process: `poll` is its exit status."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman, self.name = podman, name

    def poll(self) -> int | None:
        state = self.podman(
            "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.name
        )
        running, code = state.stdout.split()
        return None if running == "true" else int(code)

    def logs(self) -> str:
        result = self.podman("logs", "--tail", "15", self.name, check=False)
        return tail(result, lines=15) if (result.stdout or result.stderr) else "(no output)"

    def host_pid(self) -> int:
        return int(self.podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout)


def import_base(report: Report, podman: Podman, tarball: Path) -> str:
    """Import the base under the name the Dockerfile's FROM resolves to; its Python version."""
    podman("import", "--change", 'CMD ["python3"]', tarball, BASE, timeout=300)
    version_code = "import sys; print('%d.%d' % sys.version_info[:2])"
    version = podman("run", "--rm", "--network=host", BASE, "python3", "-c", version_code)
    python = version.stdout.strip()
    images = from_images(DOCKERFILE.read_text(), {"PYTHON_VERSION": python})
    for image in images:
        podman("tag", BASE, image)
    report.ok(f"base imported as {', '.join(images)} (python {python}: PYTHON_VERSION={python})")
    return python


def build(report: Report, podman: Podman, python: str) -> None:
    """Build the image, offline but for pip, and check what it holds."""
    command = ["build", "--pull=never", "--network=host", f"--build-arg=PYTHON_VERSION={python}"]
    if HOST_CA_BUNDLE.is_file():
        command.append(f"--volume={HOST_CA_BUNDLE}:{DEBIAN_CA_BUNDLE}:ro")
    started = time.monotonic()
    result = podman(*command, "--file", DOCKERFILE, "--tag", IMAGE, ROOT, timeout=900, check=False)
    if result.returncode != 0:
        raise CheckError(f"podman build exited with {result.returncode}: {tail(result, 20)}")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    base_size = int(podman("image", "inspect", "--format", "{{.Size}}", BASE).stdout)
    report.ok(
        f"built {IMAGE} in {time.monotonic() - started:.0f} s: {size / 1e6:.0f} MB "
        f"({base_size / 1e6:.0f} MB of it the base)"
    )
    digests = {ref: file_digest(podman, ref, DEBIAN_CA_BUNDLE) for ref in (BASE, IMAGE)}
    report.expect(
        digests[BASE] == digests[IMAGE],
        "the host's CA bundle, mounted for the build, is not in the image",
        f"the image's {DEBIAN_CA_BUNDLE} differs from the base's",
    )


def file_digest(podman: Podman, image: str, path: str) -> str:
    found = podman("run", "--rm", "--network=host", "--entrypoint=sha256sum", image, path)
    return found.stdout.split()[0]


def check_commands(report: Report, podman: Podman, flags: list[str]) -> None:
    """--help through the entry point; the default user of the image."""
    result = podman("run", "--rm", "--network=host", *flags, IMAGE, "--help", check=False)
    report.expect(
        result.returncode == 0 and "--replica" in result.stdout,
        "`podman run IMAGE --help` prints the router's flags (entry point vllm-session-router)",
        f"exit status {result.returncode}: {tail(result)}",
    )
    uid = podman("run", "--rm", "--network=host", "--entrypoint=id", IMAGE, "-u", check=False)
    report.expect(
        uid.stdout.strip() == "10001",
        "the image runs as uid 10001 when nothing says otherwise (Dockerfile USER)",
        f"`id -u` gave {uid.stdout.strip() or tail(uid)!r}",
    )


def serve(report: Report, podman: Podman, flags: list[str], folder: Path) -> None:
    """The router in the container, as the chart runs it, in front of a fake upstream."""
    with processes() as procs:
        port = free_port()
        command = [sys.executable, "-m", "bench.checks.fake_upstream", "--port", str(port)]
        command += ["--chunks", str(UPSTREAM_CHUNKS), "--chunk-delay", str(CHUNK_DELAY)]
        upstream = f"http://127.0.0.1:{port}"
        wait_until_up(upstream + "/health", procs.start("upstream", command, folder / "up.log"))
        router, container = start_router(podman, flags, folder, upstream)
        for path in ("/health", "/ready"):
            try:
                wait_until_up(router + path, container, timeout=30)
            except NotUp as error:
                raise CheckError(f"GET {path}: {error}; its log: {container.logs()}") from error
            report.ok(f"GET {path} answers 200, the router running with the chart's settings")
        check_stream(report, router, upstream)
        check_process(report, container)
        check_filesystem(report, podman)
        check_sigterm(report, podman, container)


def start_router(
    podman: Podman, flags: list[str], folder: Path, upstream: str
) -> tuple[str, Container]:
    """The router container, its config file mounted read-only where the chart mounts it."""
    port = free_port()
    config = {"replica": [upstream], "host": "127.0.0.1", "port": port}
    (folder / "config").mkdir()
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    mount = f"--volume={folder / 'config'}:{ROUTER_CONFIG.parent}:ro"
    run = ["run", "--detach", f"--name={CONTAINER}", "--network=host", *flags, mount]
    podman(*run, IMAGE, "--config", ROUTER_CONFIG)
    return f"http://127.0.0.1:{port}", Container(podman, CONTAINER)


def check_stream(report: Report, router: str, upstream: str) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    result = stream_chat(sdk_client(router, timeout_s=30), body, {"X-Session-Id": "image-check"})
    times = [t - result.started for t in result.content_times]
    relayed = len(times) == UPSTREAM_CHUNKS and times[-1] - times[0] > CHUNK_DELAY * 2
    report.expect(
        relayed and result.headers.get("x-router-replica") == upstream,
        f"a streamed chat completion through the router: {len(times)} chunks, the first after "
        f"{times[0] * 1e3:.0f} ms, the last after {times[-1] * 1e3:.0f} ms (relayed as they came)",
        f"expected {UPSTREAM_CHUNKS} chunks spread over time from {upstream}, "
        f"got {len(times)} from {result.headers.get('x-router-replica')}",
    )


def check_process(report: Report, container: Container) -> None:
    """The router's process as the kernel sees it: user, group, capabilities, no_new_privs."""
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{container.host_pid()}/status").read_text().splitlines()
    )
    uids, gids = status["Uid"].split(), status["Gid"].split()
    capabilities = {name: int(status[name], 16) for name in ("CapEff", "CapPrm", "CapBnd")}
    report.expect(
        set(uids) == {"10001"} and set(gids) == {"10001"},
        "the router's process runs as uid 10001, gid 10001",
        f"Uid {uids}, Gid {gids}",
    )
    report.expect(
        not any(capabilities.values()) and status["NoNewPrivs"].strip() == "1",
        "it has no capability and cannot gain privileges (no_new_privs)",
        f"{capabilities}, NoNewPrivs {status['NoNewPrivs'].strip()}",
    )


def check_filesystem(report: Report, podman: Podman) -> None:
    root = podman("exec", CONTAINER, "touch", "/opt/venv/probe", check=False)
    report.expect(
        root.returncode != 0 and "Read-only file system" in root.stderr,
        "the root filesystem is not writable (touch /opt/venv/probe: Read-only file system)",
        f"touch exited with {root.returncode}: {tail(root)}",
    )
    scratch = podman("exec", CONTAINER, "touch", "/tmp/probe", check=False)
    report.expect(scratch.returncode == 0, "/tmp is writable (tmpfs)", tail(scratch))


def check_sigterm(report: Report, podman: Podman, container: Container) -> None:
    started = time.monotonic()
    podman("kill", "--signal=TERM", CONTAINER)
    code = podman("wait", CONTAINER, timeout=STOP_TIMEOUT, check=False).stdout.strip()
    took = time.monotonic() - started
    report.expect(
        code == "0",
        f"SIGTERM: the router drains and exits with status 0 in {took:.1f} s",
        f"exit status {code or '?'} after {took:.1f} s; its log: {container.logs()}",
    )


def check(report: Report) -> None:
    if os.geteuid() != 0:
        raise CheckError("podman runs rootful here: run the image check as root")
    ensure_installed({"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"})
    mirror = apt_mirror()
    started = time.monotonic()
    tarball, built = base_tarball(mirror)
    how = f"debootstrap in {time.monotonic() - started:.0f} s" if built else "cached"
    size = tarball.stat().st_size / 1e6
    report.ok(f"base {tarball.name} ({mirror.uri} {mirror.suite}, {how}, {size:.0f} MB)")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    flags = chart_run_flags(values)
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        folder = Path(tmp)
        private_mount_namespace(folder / "host-state")
        podman = Podman(folder / "podman")
        try:
            build(report, podman, import_base(report, podman, tarball))
            print(f"      podman run {' '.join(flags)} --network=host ...", flush=True)
            check_commands(report, podman, flags)
            serve(report, podman, flags, folder)
        finally:
            podman.remove_everything()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    run_check("image check", check, errors=(CheckError, NotUp))


if __name__ == "__main__":
    main()
