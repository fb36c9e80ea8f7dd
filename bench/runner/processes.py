"""Process supervision for a run: each child in its own process group, all stopped on the way out.

Stopping signals the whole group (a shell's or locust's children too): SIGTERM, then SIGKILL after
a grace period. Inside `processes()`, SIGTERM and SIGINT unwind the run like Ctrl-C, so that
everything started is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bench import ROOT


class Processes:
    """Everything the run starts, each in its own process group, stopped in reverse order."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str] | str, log: Path | None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                shell=isinstance(cmd, str),
                start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        _signal_group(proc, signal.SIGKILL)  # children of a shell or of locust, too
        proc.wait()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc, grace=5.0)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind through the finally below

    # SIGINT too: a shell without job control starts background commands with it ignored.
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield procs
    finally:
        for sig in previous:  # a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        procs.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
