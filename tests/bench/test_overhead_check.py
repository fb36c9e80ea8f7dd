"""The overhead check runs end to end: direct, router and the bare-relay floor, one short round.

No timing is asserted (that is the check's own job, on an idle machine): only that every target
answered every request and that each relay's CPU per request was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench import ROOT


def test_the_overhead_check_measures_router_and_floor_without_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.checks.overhead", "--seconds", "0.5", "--rounds", "1",
         "--concurrency", "2", "--floor"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("    2 ")]
    assert [row[1] for row in rows] == ["direct", "router", "floor"]
    assert all(row[-1] == "0" for row in rows), rows  # no errors on any target
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["router_cpu_ms_per_request"]["2"] > 0
    assert figures["floor_cpu_ms_per_request"]["2"] > 0
