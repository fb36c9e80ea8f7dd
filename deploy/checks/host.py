"""What the checks need of the machine: Debian packages (installed with apt-get when missing) and
commands run with a time limit and a readable failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

APT_TIMEOUT = 900  # seconds for one apt-get call; the lock wait is bounded separately
APT_LOCK_WAIT = 300
STOP_GRACE = 30  # seconds an interrupted command has to clean up


class CheckError(RuntimeError):
    """A step of a check could not be done; the message says which and why."""


def run(
    command: Sequence[str | Path],
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with no standard input, capturing its output; CheckError when it fails
    (if ``check``) or runs past ``timeout`` seconds. Interrupted, the command gets SIGTERM and
    time to clean up (podman removes its build container) before SIGKILL."""
    args = [str(part) for part in command]
    with subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            stop(process)
            raise CheckError(f"`{' '.join(args)}` ran past {timeout:.0f} s") from error
        except BaseException:  # Ctrl-C, or SIGTERM turned into KeyboardInterrupt
            stop(process)
            raise
    result = subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise CheckError(f"`{' '.join(args)}` exited with {result.returncode}: {tail(result)}")
    return result


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE seconds."""
    process.terminate()
    try:
        process.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def tail(result: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    """The last distinct lines of a command's stderr (else stdout), on one line."""
    text = (result.stderr or result.stdout or "").strip().splitlines()
    distinct = list(dict.fromkeys(line.strip() for line in text if line.strip()))
    return " | ".join(distinct[-lines:])


def ensure_installed(commands: Mapping[str, str]) -> None:
    """Install the Debian package of each command (command -> package) not found on PATH."""
    missing = sorted({commands[command] for command in commands if not shutil.which(command)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise CheckError(f"needs the Debian packages {', '.join(missing)}: install them as root")
    print(f"      installing {' '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
    install += ["-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT}", *missing]
    if run(install, APT_TIMEOUT, env, check=False).returncode != 0:
        # A clean machine may have no package lists yet.
        run(["apt-get", "update", "-q", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT}"], 600, env)
        run(install, APT_TIMEOUT, env)
    still = [command for command in commands if not shutil.which(command)]
    if still:
        raise CheckError(f"installed {', '.join(missing)}, yet {', '.join(still)} is not on PATH")
