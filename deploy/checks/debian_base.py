"""The image check's base image, made from Debian's packages, so that no registry is needed.

`debootstrap --variant=minbase` of the suite and mirror apt is configured with, plus python3,
python3-venv, python-is-python3 (`python` works as in the official python images) and
ca-certificates (so a build can mount the host's bundle over Debian's). Trimmed as the slim images
are (no apt lists or caches, docs, man pages, locales), packed as a tarball and cached for the
user ($XDG_CACHE_HOME or ~/.cache, vllm-session-router/image-check/), shared by every clone and
worktree, under a name that says what went into it: a rerun takes seconds, a machine without it
builds it (1.5-2.5 minutes here).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy.checks.host import CheckError, run

PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
TRIMMED = (
    *("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"),
    *("usr/share/locale", "usr/share/info"),
)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = CACHE / "vllm-session-router" / "image-check"
SOURCES = Path("/etc/apt/sources.list")
SOURCES_DIR = Path("/etc/apt/sources.list.d")
DEBOOTSTRAP_TIMEOUT = 900


@dataclass(frozen=True)
class Mirror:
    """A Debian archive and suite apt uses, e.g. http://deb.debian.org/debian bookworm."""

    uri: str
    suite: str


def apt_mirror(sources: Path = SOURCES, sources_dir: Path = SOURCES_DIR) -> Mirror:
    """The first Debian archive apt is configured with, in sources.list or a .list or deb822
    .sources file, with its main suite (not -updates, -backports or -security)."""
    files = [sources, *sorted(sources_dir.glob("*.list")), *sorted(sources_dir.glob("*.sources"))]
    for path in files:
        if path.is_file():
            for uri, suite in _entries(path.read_text()):
                if "-" not in suite and "security" not in uri and "debian" in uri:
                    return Mirror(uri.rstrip("/"), suite)
    raise CheckError("found no Debian archive in apt's sources (/etc/apt/sources.list*)")


def _entries(text: str) -> list[tuple[str, str]]:
    """(URI, suite) of each `deb` entry, in one-line or deb822 format."""
    found = []
    for line in text.splitlines():  # one-line: deb [options] URI suite components...
        match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if match:
            found.append((match.group(1), match.group(2)))
    for stanza in re.split(r"\n\s*\n", text):  # deb822: Types / URIs / Suites fields
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
        if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
            found += [(uri, suite) for uri in fields.get("URIs", "").split()
                      for suite in fields.get("Suites", "").split()]  # fmt: skip
    return found


def base_tarball(mirror: Mirror, cache: Path = CACHE) -> tuple[Path, bool]:
    """The base root filesystem as a tarball; (path, True) when it had to be built now."""
    recipe = f"{mirror.uri} {mirror.suite} minbase {','.join(PACKAGES)} trim {','.join(TRIMMED)}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    tarball = cache / f"debian-{mirror.suite}-minbase-python3-{key}.tar"
    if tarball.exists():
        return tarball, False
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=cache) as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        run([*command, mirror.suite, rootfs, mirror.uri], DEBOOTSTRAP_TIMEOUT)
        for folder in TRIMMED:
            for entry in (rootfs / folder).glob("*"):
                # A link is removed, never followed: it may point outside the root filesystem.
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        packed = Path(tmp) / "base.tar"
        run(["tar", "-C", rootfs, "--numeric-owner", "-cf", packed, "."], 300)
        for stale in cache.glob("debian-*.tar"):  # other recipes' tarballs
            stale.unlink()
        packed.replace(tarball)  # whole or not at all, even if interrupted
    return tarball, True
