"""Smoke test of the main benchmark: the runner at quick size writes a complete, consistent report.

Runs `python -m bench.runner --quick` (2 CPU mocks, session and round_robin, 10 s each) as CI would;
no timing is asserted, only that the figures exist and agree with each other.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ROOT

POLICIES = ("session", "round_robin")
KEYS = (
    "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "first_turn_ttft_p50_ms",
    "later_turns_ttft_p50_ms", "later_turns_ttft_p90_ms", "requests", "requests_per_s", "errors",
    "hit_ratio", "ideal_hit_ratio", "max_mean_load",
)  # fmt: skip

pytest.importorskip("locust")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    done = subprocess.run(
        [sys.executable, "-m", "bench.runner", "--quick", "--mock-replicas", "2",
         "--policies", ",".join(POLICIES), "--results-dir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = (results / "latest").resolve()
    assert f"| {POLICIES[0]} |" in (run / "report.md").read_text()  # the index of scenarios
    return run / "quick"


def test_quick_run_writes_every_file(run_folder: Path) -> None:
    for name in ("summary.json", "report.md", "ttft_cdf.png", "ttft_by_turn.png", "hit_ratio.png"):
        assert (run_folder / name).stat().st_size > 0, name
    for policy in POLICIES:
        assert (run_folder / f"records-{policy}.jsonl").exists()
        assert f"| {policy} |" in (run_folder / "report.md").read_text()


def test_quick_run_figures_are_complete_and_consistent(run_folder: Path) -> None:
    summary = json.loads((run_folder / "summary.json").read_text())
    assert set(summary["policies"]) == set(POLICIES)
    assert summary["workload"]["turns"] >= 2 and len(summary["replicas"]) == 2
    for name, figures in summary["policies"].items():
        missing = [key for key in KEYS if figures.get(key) is None]
        assert not missing, (name, missing)
        assert figures["requests"] > 0 and figures["errors"] == 0, name
        assert 0 <= figures["hit_ratio"] <= 1, name
        assert figures["hit_ratio"] <= figures["ideal_hit_ratio"] + 0.03, name
        assert figures["ttft_p50_ms"] <= figures["ttft_p90_ms"] <= figures["ttft_p99_ms"], name
        assert figures["max_mean_load"] >= 1.0, name


def test_quick_run_leaves_no_process_behind(run_folder: Path) -> None:
    # locust has the scenario folder on its command line (--records); the mocks had these ports
    found = subprocess.run(["pgrep", "-f", str(run_folder)], capture_output=True, text=True)
    assert found.stdout.strip() == ""
    for url in json.loads((run_folder / "summary.json").read_text())["replicas"]:
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(1.0)
            s.connect((host, int(port)))
