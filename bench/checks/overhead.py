"""What the router costs: direct-to-upstream vs through-the-router, side by side in one run.

    python -m bench.checks.overhead [--seconds 5] [--concurrency 1,32,128]

Starts a fast fake upstream that streams 50 SSE chunks per request and the router in front of it
(both as processes, as deployed), then drives each target with the same closed-loop load at each
concurrency: requests/s and time to first chunk (TTFT) p50/p99. Direct and routed runs alternate,
so drift on a noisy machine hits both. Last line: JSON with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp

from bench.endpoints import free_port, router_command, start_server, wait_until_up_async

BODY = {
    "model": "fake-model",
    "stream": True,
    "messages": [{"role": "user", "content": "Stream me fifty chunks."}],
}


@dataclass
class Result:
    rps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests: int
    errors: int


async def drive(url: str, concurrency: int, seconds: float) -> Result:
    """Closed loop: `concurrency` clients, each sending the next request when one ends."""
    ttfts: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(i: int) -> None:
            nonlocal errors
            headers = {"X-Session-Id": f"bench-{i}"}
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    async with session.post(url, json=BODY, headers=headers) as response:
                        await response.content.readany()
                        ttfts.append(time.perf_counter() - sent)
                        while await response.content.readany():
                            pass
                        if response.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] if ttfts else float("nan")
    return Result(
        rps=len(ttfts) / elapsed,
        ttft_p50_ms=statistics.median(ttfts) * 1000 if ttfts else float("nan"),
        ttft_p99_ms=p99 * 1000,
        requests=len(ttfts),
        errors=errors,
    )


async def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    upstream_port, router_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    router = f"http://127.0.0.1:{router_port}"
    with ExitStack() as stack:
        fake = [sys.executable, "-m", "bench.checks.fake_upstream", "--port", str(upstream_port)]
        fake_upstream = start_server([*fake, "--chunks", "50"], stack)
        flags = ("--replica", upstream, "--log-level", "warning")
        router_process = start_server(router_command(router_port, *flags), stack)
        await wait_until_up_async(upstream + "/health", fake_upstream)
        await wait_until_up_async(router + "/ready", router_process)
        await drive(router + "/v1/chat/completions", 8, 1.0)  # warm both paths up
        await drive(upstream + "/v1/chat/completions", 8, 1.0)
        ratios: dict[str, dict[str, float]] = {"rps_ratio": {}, "added_ttft_p50_ms": {}}
        header = ("conc", "target", "req/s", "ttft p50 ms", "ttft p99 ms", "errors")
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (5, 7, 9, 12, 12, 7), strict=True)))
        for concurrency in args.concurrency:
            direct_runs, routed_runs = [], []
            for _ in range(args.rounds):  # alternate, so drift hits both sides
                direct_runs.append(
                    await drive(upstream + "/v1/chat/completions", concurrency, args.seconds)
                )
                routed_runs.append(
                    await drive(router + "/v1/chat/completions", concurrency, args.seconds)
                )
            direct, routed = best(direct_runs), best(routed_runs)
            if args.verbose:
                print(
                    f"      runs req/s direct {[round(r.rps) for r in direct_runs]} "
                    f"router {[round(r.rps) for r in routed_runs]}"
                )
            for name, r in (("direct", direct), ("router", routed)):
                print(
                    f"{concurrency:>5} {name:>7} {r.rps:>9.1f} {r.ttft_p50_ms:>12.2f} "
                    f"{r.ttft_p99_ms:>12.2f} {r.errors:>7}"
                )
            key = str(concurrency)
            ratios["rps_ratio"][key] = round(routed.rps / direct.rps, 3)
            ratios["added_ttft_p50_ms"][key] = round(routed.ttft_p50_ms - direct.ttft_p50_ms, 3)
        return ratios


def best(runs: list[Result]) -> Result:
    """The median run by throughput: one noisy slice of the machine does not decide."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per target")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 32, 128],
        help="comma list of concurrent clients",
    )
    parser.add_argument("--verbose", action="store_true", help="print every run's req/s")
    args = parser.parse_args()
    try:
        import uvloop

        ratios = uvloop.run(measure(args))
    except ImportError:  # pragma: no cover
        ratios = asyncio.run(measure(args))
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
