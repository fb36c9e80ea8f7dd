"""One line per check passed, one per problem; the exit status says whether there was any."""

from __future__ import annotations

import time


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
