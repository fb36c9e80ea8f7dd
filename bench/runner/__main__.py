"""`python -m bench.runner`: the main benchmark, every scenario in turn (bench/runner/run.py,
scenarios.py), or with --real-vllm-cpu the same over two real vLLM CPU engines and the mock beside
them (bench/real/real_cpu.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from bench.real import real_cpu
from bench.runner import report
from bench.runner.cli import parse_args
from bench.runner.run import point_latest_at, run
from bench.runner.scenarios import DEFAULT_SCENARIOS, QUICK_SCENARIO, SCENARIOS, Scenario
from bench.runner.sizes import size_of
from bench.runner.targets import targets_of


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    if args.quick and args.scenarios is None:
        return [QUICK_SCENARIO]
    names = [n.strip() for n in (args.scenarios or DEFAULT_SCENARIOS).split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise SystemExit(f"unknown scenario {unknown}; one of {', '.join(SCENARIOS)}")
    return [SCENARIOS[n] for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.runner " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.real_vllm_cpu:
        real_cpu.run(args, command)
        return 0
    started = datetime.now(timezone.utc)
    folder = args.results_dir / started.strftime("%Y%m%d-%H%M%S")
    summaries = {}
    for scenario in scenarios_of(args):
        print(f"scenario {scenario.name}: {scenario.title}", file=sys.stderr)
        size = size_of(args, scenario.size)
        targets = targets_of(args, scenario.policies)
        _, summary = run(args, size, targets, command, folder=folder / scenario.name)
        summary["title"] = scenario.title
        summaries[scenario.name] = summary
        print(f"\n{scenario.title}\n{report.table(summary['policies'])}\n")
    (folder / "summary.json").write_text(
        json.dumps({"command": command, "scenarios": summaries}, indent=2) + "\n",
        encoding="utf-8",
    )
    report.write_index(folder, summaries)
    point_latest_at(folder)
    print(f"{folder} ({sum(s['elapsed_s'] for s in summaries.values()):.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:  # a process or endpoint that failed; the details are in its log
        print(f"bench failed: {exc}; everything started was stopped", file=sys.stderr)
        sys.exit(1)
