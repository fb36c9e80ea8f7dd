"""The runner's command line: replicas, targets, load and workload (docs/benchmark.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench import ROOT

RESULTS = ROOT / "bench" / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.runner",
        description="Run the seeded multi-turn chat workload through each routing policy and "
        "write bench/results/<timestamp>/ (summary.json, report.md, plots).",
    )
    p.add_argument("--quick", action="store_true", help="smoke size (CI): small and short")
    p.add_argument(
        "--scenarios",
        help="comma list of scenarios (bench/runner/scenarios.py): default, skewed "
        "(default: both; with --quick: a smoke-size default)",
    )
    g = p.add_argument_group("replicas")
    g.add_argument("--replicas", default="", help="comma list of vLLM base URLs (no mocks started)")
    g.add_argument("--mock-replicas", type=int, help="CPU mocks to start (full 4, quick 2)")
    g.add_argument("--mock-profile", default="llama-3-8b-h100", help="mock timing profile")
    g.add_argument("--mock-speed", type=float, help="mock --speed (1.0: real H100 time)")
    g.add_argument("--mock-kv-blocks", type=int, help="mock KV capacity in blocks (full 7000)")
    g = p.add_argument_group("targets")
    g.add_argument(
        "--policies",
        help="comma list of this router's policies "
        "(default session,prefix,round_robin,least_loaded; '' for none)",
    )
    g.add_argument(
        "--router-cmd",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="external router: shell command with {port}, {replicas} (comma list), "
        "{replica_args} (--replica U ...), {host}",
    )
    g.add_argument(
        "--router-url",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="a running router (e.g. in Kubernetes); implies --policies ''",
    )
    g.add_argument(
        "--router-arg",
        action="append",
        default=[],
        help="extra flag for this router (repeat): --router-arg=--load-factor=1.5",
    )
    g = p.add_argument_group("load")
    g.add_argument("--users", type=int, help="concurrent chat users (locust -u; full 96)")
    g.add_argument("--spawn-rate", type=float, help="users started per second (locust -r)")
    g.add_argument("--duration", type=float, help="seconds per target (full 75, quick 10)")
    g = p.add_argument_group("workload (see bench/load/workload.py)")
    g.add_argument("--workload-seed", type=int)
    # Lengths in words (--*-tokens: their former spelling); only the answer is in tokens.
    g.add_argument("--system-words", "--system-tokens", type=int, help="shared system prompt")
    g.add_argument("--context-words", "--context-tokens", type=int, help="context in turn 1")
    g.add_argument("--followup-words", "--followup-tokens", type=int, help="later user messages")
    g.add_argument("--answer-tokens", type=int, help="max_tokens per request")
    g.add_argument("--turns", type=int, help="turns per session")
    g.add_argument("--think-time", type=float, help="mean pause between turns (s)")
    g.add_argument("--hot-share", type=float, help="share of hot sessions (skewed workload)")
    g.add_argument("--hot-context-factor", type=float, help="hot sessions' document factor")
    g.add_argument("--hot-pace-factor", type=float, help="hot sessions' turn-rate factor")
    g.add_argument(
        "--shared-opening",
        action="store_true",
        default=None,
        help="every session opens with the same instruction (an agent's fixed preamble)",
    )
    g.add_argument("--session-header", default="X-Session-Id", help="header with the session id")
    g.add_argument("--model", default="", help="model name (default: first of /v1/models)")
    g.add_argument(
        "--extra-body", default="", help='JSON merged into every request, e.g. {"temperature": 0}'
    )
    p.add_argument(
        "--real-vllm-cpu",
        action="store_true",
        help="start two real vLLM CPU engines (make vllm-cpu) as the replicas, then run the same "
        "workload on two CPU mocks with the fitted small-cpu profile and compare them "
        "(bench/real/real_cpu.py)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="parent of the run folder")
    return p.parse_args(argv)
