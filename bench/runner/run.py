"""One scenario of the benchmark: one seeded chat workload through each target in turn.

    python -m bench.runner                     # 4 CPU mock replicas, 4 policies, ~6 min
    python -m bench.runner --quick             # smoke size: 2 mocks, small workload, ~1 min
    python -m bench.runner --replicas http://gpu-0:8000,http://gpu-1:8000   # real vLLM servers
    python -m bench.runner --router-url http://router.example:8000 --replicas ...  # a deployed one
    python -m bench.runner --router-cmd 'other=other-router --port {port} {replica_args}'

For each target: start the router (a subprocess in its own process group), reset the replicas'
prefix caches, snapshot their /metrics counters, run locust headless for the same seeded workload
and duration, snapshot again, stop the router. Then bench/results/<timestamp>/ gets summary.json,
report.md, PNG plots, the per-request records and locust's log; bench/results/latest points at it.
Everything started is stopped on exit, Ctrl-C or error.

This module is the sequence; each step has its own: cli.py (flags), sizes.py (presets),
targets.py (what to start), processes.py, replicas.py (mocks, cache resets, the shared-prefix
probe), counters.py (the replicas' counters), locust.py and report.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.endpoints import free_port, wait_until_up
from bench.runner import report
from bench.runner.counters import ReplicaCounters, counter_deltas, snapshot
from bench.runner.locust import locust_command, run_locust
from bench.runner.processes import Processes, processes
from bench.runner.replicas import (
    EngineTruth,
    block_size_of,
    model_name,
    probe_shared_prefix,
    reset_caches,
    start_mocks,
)
from bench.runner.sizes import Size
from bench.runner.targets import Target, launch


@dataclass
class Measured:
    target: Target
    records: list[dict[str, Any]]
    deltas: dict[str, ReplicaCounters]
    cache_reset: bool
    summary: dict[str, Any] = field(default_factory=dict)


def start_target(
    procs: Processes,
    target: Target,
    replicas: Sequence[str],
    extra: Sequence[str],
    folder: Path,
    truth: EngineTruth | None,
) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """The target's base URLs (one per instance) and the processes started for it."""
    if target.url:
        return [target.url], []
    urls, started = [], []
    for instance in range(target.instances):
        port = free_port()
        how = launch(target, port, replicas, extra, truth)
        log = f"router-{target.name}" + (f"-{instance}" if target.instances > 1 else "")
        proc = procs.start(target.name, how.command, folder / f"{log}.log")
        wait_until_up(how.ready_url, proc, ok=how.ready_statuses)
        urls.append(f"http://127.0.0.1:{port}")
        started.append(proc)
    return urls, started


def measure(
    procs: Processes,
    target: Target,
    replicas: Sequence[str],
    size: Size,
    args: argparse.Namespace,
    folder: Path,
    truth: EngineTruth | None,
) -> Measured:
    urls, routers = start_target(procs, target, replicas, args.router_arg, folder, truth)
    try:
        cache_reset = reset_caches(replicas) if replicas else False
        before = snapshot(replicas)
        records = folder / f"records-{target.name}.jsonl"
        run_locust(
            procs, locust_command(urls, target, size, records, args), target, size, folder, records
        )
        after = snapshot(replicas)
    finally:
        for router in routers:
            procs.stop(router)
    return Measured(
        target, report.load_records(records), counter_deltas(before, after), cache_reset
    )


def run(
    args: argparse.Namespace,
    size: Size,
    targets: Sequence[Target],
    command: str,
    setup: str = "",
    folder: Path | None = None,
    truth: EngineTruth | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Measure every target once; write `folder` (default: a new run folder, which
    bench/results/latest then points at); returns it and its summary."""
    started = datetime.now(timezone.utc)
    standalone = folder is None
    folder = folder or args.results_dir / started.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    results: list[Measured] = []
    with processes() as procs:
        replicas = [r.strip().rstrip("/") for r in args.replicas.split(",") if r.strip()]
        mocks = not replicas and any(t.url is None for t in targets)
        if mocks:
            print(
                f"starting {size.mocks} mock replicas ({args.mock_profile}, speed {size.speed}, "
                f"{size.kv_blocks} KV blocks each)",
                file=sys.stderr,
            )
            events = any(t.events for t in targets)
            replicas, truth = start_mocks(procs, size, args.mock_profile, folder, events)
        probe_base = replicas[0] if replicas else (targets[0].url or "")
        block_size = block_size_of(replicas[0]) if replicas else report.BLOCK_SIZE
        shared_prefix = 0
        if probe_base:
            model = model_name(probe_base, args.model)
            shared_prefix = probe_shared_prefix(
                probe_base, replicas[0] if replicas else None, model, size.workload
            )
        for target in targets:
            results.append(measure(procs, target, replicas, size, args, folder, truth))
    policies = {}
    for m in results:
        m.summary = report.summarise_policy(
            m.records, size.duration, m.deltas, replicas, shared_prefix, block_size
        )
        m.summary["cache_reset"] = m.cache_reset
        m.summary["session_header"] = args.session_header if m.target.session_header else None
        m.summary["router_instances"] = m.target.instances
        m.summary["engine_truth"] = m.target.events
        policies[m.target.name] = m.summary
    summary: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - clock, 1),
        "command": command,
        "policies": policies,
        "workload": size.workload.as_dict(),
        "run": {"users": size.users, "spawn_rate": size.spawn_rate, "duration_s": size.duration},
        "replicas": replicas,
        "mock": (
            {
                "count": size.mocks,
                "profile": args.mock_profile,
                "speed": size.speed,
                "kv_blocks": size.kv_blocks,
            }
            if mocks
            else None
        ),
        "replica_setup": (
            f"{size.mocks} CPU mock replicas (`bench.mock_vllm`): profile {args.mock_profile}, "
            f"speed {size.speed}, {size.kv_blocks} KV blocks of {block_size} tokens each."
            if mocks
            else setup or "External vLLM replicas."
        ),
        "block_size": block_size,
        "shared_prefix_tokens": shared_prefix,
        "ideal_method": report.IDEAL_METHOD,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report.write_report(folder, summary)
    report.write_plots(folder, summary, {m.target.name: m.records for m in results})
    if standalone:
        point_latest_at(folder)
    return folder, summary


def point_latest_at(folder: Path) -> None:
    latest = folder.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(folder.name)
