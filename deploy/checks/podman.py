"""podman with every piece of its state in one temporary folder, set up for this machine.

Storage, run state, temporary files and events go to the folder through a containers.conf and a
storage.conf of the check's own. What podman 4.3 and runc keep elsewhere whatever they are told
(the blob-info cache in /var/lib/containers, runc's state in /run/runc when a container is
cleaned up, layer copies in /var/tmp) goes there too: the check runs in a private mount namespace
with folders of its own bound over those three. What this machine needs: runc (crun rejects its
cgroup layout), cgroupfs (no systemd), and default ulimits within the hard limits the sandbox
grants (podman's defaults exceed them, and it starts conmon with at most 32768 processes).

Every container, build steps' included, runs under a cgroup of this check's own: podman stopped in
the middle of a build leaves the step's processes running, and they are found and killed there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

from deploy.checks.host import CheckError, run

CLONE_NEWNS = 0x00020000
# Where podman and runc keep state outside the configured folders; bound over in the namespace.
HOST_STATE = (Path("/var/lib/containers"), Path("/run/runc"), Path("/var/tmp"))
MOST_FILES = 65536
MOST_PROCESSES = 4096  # a router needs a handful; conmon allows 32768 at most


def private_mount_namespace(folder: Path) -> None:
    """Move this process (and all it starts) into a mount namespace of its own, where folders
    under ``folder`` are bound over HOST_STATE. Must run before any thread starts."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        error = ctypes.get_errno()
        raise CheckError(f"unshare(CLONE_NEWNS): {os.strerror(error)} (the check needs root)")
    run(["mount", "--make-rprivate", "/"], timeout=30)
    for path in HOST_STATE:
        ours = folder / path.relative_to("/").as_posix().replace("/", "-")
        ours.mkdir(parents=True, exist_ok=True)
        path.mkdir(parents=True, exist_ok=True)  # an empty mount point, left in place if new
        run(["mount", "--bind", ours, path], timeout=30)


def default_ulimits() -> list[str]:
    files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], MOST_FILES)
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], MOST_PROCESSES)
    return [f"nofile={files}:{files}", f"nproc={processes}:{processes}"]


class Podman:
    """Runs podman commands against the state in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cgroup = f"vllm-session-router-check-{os.getpid()}"
        self.started = 0  # containers started: each has a sub-cgroup of its own
        for name in ("storage", "run", "tmp", "net", "home"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        ulimits = ", ".join(f'"{limit}"' for limit in default_ulimits())
        (folder / "containers.conf").write_text(
            f"[containers]\ndefault_ulimits = [{ulimits}]\n"
            f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{folder}/events.log"\ntmp_dir = "{folder}/tmp"\n'
            f'image_copy_tmp_dir = "{folder}/tmp"\nvolume_path = "{folder}/storage/volumes"\n'
            f'static_dir = "{folder}/storage/libpod"\n'
            f'[network]\nnetwork_config_dir = "{folder}/net"\n'
        )
        (folder / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{folder}/storage"\n'
            f'runroot = "{folder}/run"\n'
        )
        # Short names such as python:3.11-slim mean docker.io's, as for Docker; never pulled.
        (folder / "registries.conf").write_text(
            'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(folder / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
            "TMPDIR": str(folder / "tmp"),
            "BUILDAH_TMPDIR": str(folder / "tmp"),
            "HOME": str(folder / "home"),  # podman reads and tidies ~/.config/containers
            "XDG_CONFIG_HOME": str(folder / "home" / ".config"),
        }

    def __call__(
        self, *args: str | Path, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if args and args[0] in ("run", "build"):  # the commands that start containers
            # One sub-cgroup each: a build uses it as is, and cgroup v1 refuses device rules
            # for a cgroup that has children.
            self.started += 1
            args = (args[0], f"--cgroup-parent=/{self.cgroup}/{self.started}", *args[1:])
        return run(["podman", *args], timeout, env=self.env, check=check)

    def remove_everything(self) -> None:
        """Processes, containers, images, storage: the folder is left to delete."""
        kill_cgroup(self.cgroup)
        self("rm", "--all", "--force", "--time", "0", timeout=60, check=False)
        self("system", "reset", "--force", timeout=120, check=False)
        kill_cgroup(self.cgroup)


def kill_cgroup(name: str, attempts: int = 50) -> None:
    """SIGKILL every process in the cgroup ``name`` (every hierarchy, sub-cgroups too), then
    remove it."""
    folders = [root / name for root in cgroup_roots() if (root / name).is_dir()]
    for _ in range(attempts):
        pids = {
            int(pid)
            for folder in folders
            for procs in folder.rglob("cgroup.procs")
            for pid in procs.read_text().split()
        }
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for folder in folders:
        for cgroup in sorted(folder.rglob("*/"), key=lambda path: -len(path.parts)):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()


def cgroup_roots() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers, v2 unified)."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        kind = fields[fields.index("-") + 1]
        if kind in ("cgroup", "cgroup2"):
            roots.append(Path(fields[4]))
    return roots
