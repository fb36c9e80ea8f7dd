"""One line per check passed, one per problem; the exit status says whether there was any."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable


class Report:
    """Collects problems; `ok` and `fail` print as they go."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.started = time.monotonic()

    def ok(self, what: str) -> None:
        print(f"ok    {what}", flush=True)

    def fail(self, what: str) -> None:
        self.problems.append(what)
        print(f"FAIL  {what}", flush=True)

    def expect(self, condition: bool, what: str, problem: str) -> None:
        if condition:
            self.ok(what)
        else:
            self.fail(f"{what}: {problem}")

    def finish(self, name: str) -> None:
        """Print the summary and exit 1 if anything failed."""
        took = time.monotonic() - self.started
        if self.problems:
            print(f"\n{name}: {len(self.problems)} problem(s) in {took:.1f} s", flush=True)
            raise SystemExit(1)
        print(f"\n{name}: all passed in {took:.1f} s", flush=True)


def run_check(
    name: str, check: Callable[[Report], None], errors: tuple[type[Exception], ...]
) -> None:
    """Run ``check`` and exit 1 if it found a problem. One of ``errors`` (a step that could not be
    done) is a problem too; SIGTERM unwinds like Ctrl-C, so that what was started is stopped."""
    signal.signal(signal.SIGTERM, _interrupt)
    report = Report()
    try:
        check(report)
    except errors as error:
        report.fail(str(error))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        raise SystemExit(130) from None
    report.finish(name)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
