"""Soak: a steady request rate through the router over mock vLLM replicas, watching its memory.

    python -m bench.checks.soak [--minutes 10] [--rate 20] [--replicas 3] [--speed 4]

Starts `--replicas` CPU mocks of vLLM (H100 profile, timings divided by `--speed`) and the router
as processes, then sends `--rate` streaming chat requests per second (open loop) from multi-turn
sessions: each session sends `--turns` turns and is replaced by a new session id, so the router
sees an ever-growing set of conversations, as in production. Every `--sample` seconds it reads
the router's resident memory from /proc/PID/status. At the end it prints requests, errors, the
rate held, TTFT p50/p99 and the RSS growth after warm-up; exit status 1 if there were errors or
the RSS grew by more than `--max-growth` percent.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import aiohttp

from bench.endpoints import free_port, router_command, start_server, wait_until_up_async

SYSTEM = "You are a helpful assistant in a long-running soak test. Answer briefly."


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    skipped: int = 0  # ticks when the in-flight cap was reached: the rate was not held
    peak_inflight: int = 0  # a stall of the machine shows here, and as a step in the RSS
    ttft: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, kB)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:200])


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc (no psutil)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def messages(session: str, turn: int) -> list[dict[str, str]]:
    history = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Context for {session}: " + "lorem ipsum dolor " * 60},
    ]
    for t in range(1, turn):
        history += [
            {"role": "assistant", "content": f"Answer {t} of {session}."},
            {"role": "user", "content": f"Follow-up question {t}?"},
        ]
    return history


async def one_turn(
    http: aiohttp.ClientSession, url: str, session: str, turn: int, tally: Tally, answer: int
) -> None:
    body = {
        "model": "mock",
        "messages": messages(session, turn),
        "stream": True,
        "max_tokens": answer,
    }
    sent = time.perf_counter()
    first: float | None = None
    try:
        async with http.post(
            url + "/v1/chat/completions", json=body, headers={"X-Session-Id": session}
        ) as response:
            if response.status != 200:
                tally.error(f"status {response.status}: {await response.text()}")
                return
            done = False
            async for line in response.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - sent
                if line.startswith(b"event: error"):
                    tally.error("stream ended with event: error")
                    return
                done = done or line.startswith(b"data: [DONE]")
            if not done:
                tally.error("stream ended without [DONE]")
                return
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        tally.error(f"{type(error).__name__}: {error}")
        return
    finally:
        tally.requests += 1
    if first is not None:
        tally.ttft.append(first)


async def drive(args: argparse.Namespace, url: str, router_pid: int) -> Tally:
    """Open loop at args.rate requests/s; sessions of args.turns turns, renewed as they end."""
    tally = Tally()
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    ids = (f"soak-{n}" for n in itertools.count())
    idle: list[tuple[str, int]] = []  # sessions waiting for their next turn
    inflight: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)

    async def session_turn(http: aiohttp.ClientSession, session: str, turn: int) -> None:
        await one_turn(http, url, session, turn, tally, args.answer_tokens)
        if turn < args.turns:
            idle.append((session, turn + 1))

    async def sample_rss() -> None:
        while True:
            tally.rss.append((time.monotonic() - started, rss_kb(router_pid)))
            await asyncio.sleep(args.sample)

    sampler = asyncio.create_task(sample_rss())
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as http:
        tick = 1.0 / args.rate
        next_at = time.monotonic()
        report_at = started + 30
        while (now := time.monotonic()) < stop_at:
            if now >= report_at:
                report_at += 30
                print(
                    f"[{now - started:6.0f}s] requests {tally.requests} errors {tally.errors} "
                    f"in flight {len(inflight)} rss {tally.rss[-1][1] / 1024:.1f} MiB",
                    flush=True,
                )
            if len(inflight) >= args.max_inflight:
                tally.skipped += 1
            else:
                session, turn = idle.pop(0) if idle else (next(ids), 1)
                task = asyncio.create_task(session_turn(http, session, turn))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                tally.peak_inflight = max(tally.peak_inflight, len(inflight))
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if inflight:
            await asyncio.wait(inflight, timeout=args.request_timeout)
    sampler.cancel()
    tally.rss.append((time.monotonic() - started, rss_kb(router_pid)))
    return tally


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def rss_at(tally: Tally, seconds: float) -> int:
    return next((kb for t, kb in tally.rss if t >= seconds), tally.rss[-1][1])


def summarize(args: argparse.Namespace, tally: Tally) -> dict[str, object]:
    """Growth after warm-up, and over the second half: a leak grows in both; a high-water
    step (a burst of concurrency that the allocator keeps) only in the first."""
    at_warm = rss_at(tally, args.warmup)
    at_mid = rss_at(tally, (args.warmup + args.minutes * 60) / 2)
    at_end = tally.rss[-1][1]
    return {
        "minutes": args.minutes,
        "target_rate": args.rate,
        "held_rate": round(tally.requests / (args.minutes * 60), 2),
        "requests": tally.requests,
        "errors": tally.errors,
        "skipped_ticks": tally.skipped,
        "peak_inflight": tally.peak_inflight,
        "ttft_p50_ms": round(percentile(tally.ttft, 50) * 1000, 1),
        "ttft_p99_ms": round(percentile(tally.ttft, 99) * 1000, 1),
        "rss_warm_mib": round(at_warm / 1024, 1),
        "rss_end_mib": round(at_end / 1024, 1),
        "rss_max_mib": round(max(kb for _, kb in tally.rss) / 1024, 1),
        "rss_growth_pct": round((at_end - at_warm) / at_warm * 100, 2),
        "rss_mid_mib": round(at_mid / 1024, 1),
        "rss_growth_second_half_pct": round((at_end - at_mid) / at_mid * 100, 2),
        "error_samples": tally.error_samples,
    }


async def soak(args: argparse.Namespace) -> tuple[dict[str, object], Tally]:
    with ExitStack() as stack:
        replicas: list[str] = []
        mocks: list[subprocess.Popen[bytes]] = []
        for i in range(args.replicas):
            port = free_port()
            cmd = ["-m", "bench.mock_vllm", "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--profile", args.profile, "--speed", str(args.speed), "--seed", str(i)]
            mocks.append(start_server([sys.executable, *cmd, "--model", "mock"], stack))
            replicas.append(f"http://127.0.0.1:{port}")
        port = free_port()
        flags = [a for r in replicas for a in ("--replica", r)]
        router = start_server(router_command(port, "--log-level", "warning", *flags), stack)
        for replica, mock in zip(replicas, mocks, strict=True):
            await wait_until_up_async(replica + "/health", mock)
        url = f"http://127.0.0.1:{port}"
        await wait_until_up_async(url + "/ready", router)
        tally = await drive(args, url, router.pid)
    return summarize(args, tally), tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (10)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (20)")
    parser.add_argument("--replicas", type=int, default=3, help="mock vLLM replicas (3)")
    parser.add_argument("--profile", default="llama-3-8b-h100", help="mock timing profile")
    parser.add_argument("--speed", type=float, default=4.0, help="mock speed factor (4)")
    parser.add_argument("--turns", type=int, default=8, help="turns per session (8)")
    parser.add_argument("--answer-tokens", type=int, default=32, help="max_tokens (32)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of warm-up (60)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-inflight", type=int, default=256, help="cap on open requests")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--max-growth", type=float, default=10.0, help="allowed RSS growth %%")
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")
    args = parser.parse_args()
    summary, tally = asyncio.run(soak(args))
    print(json.dumps(summary, indent=2))
    if args.json:
        series = [[round(t, 1), round(kb / 1024, 2)] for t, kb in tally.rss]
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({**summary, "rss_series_mib": series}, out, indent=2)
    growth = float(str(summary["rss_growth_pct"]))
    ok = summary["errors"] == 0 and growth <= args.max_growth
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
