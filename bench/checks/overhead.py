"""What the router costs: direct-to-upstream vs through-the-router, side by side in one run.

    python -m bench.checks.overhead [--seconds 4] [--concurrency 1,32,128] [--chunks 16]
                                    [--chunk-delay 0] [--profile router.prof]
                                    [--floor] [--raw] [--nginx]
                                    [--baseline ../router-before]

Starts a fast fake upstream that streams `--chunks` SSE chunks per request and the router in front
of it (both as processes, as deployed), then drives each target with the same closed-loop load at
each concurrency: requests/s, time to first chunk (TTFT) p50/p99, and the router process's own CPU
time (user + system, from /proc) per request over each routed run. Direct and routed runs
alternate, so drift on a noisy machine hits both; each figure is the median run. With --floor, a
bare aiohttp relay (`floor_proxy.py`) is measured the same way in the same rounds: the CPU a
Python relay on these libraries cannot go below. With --raw, a relay on raw asyncio protocols
(`protocol_relay.py`: uvloop and httptools, no aiohttp) shows what Python can do without aiohttp's
machinery. With --nginx, nginx relays the same way in the same rounds (`nginx_reference.py`):
the compiled router the targets are set against. With --baseline DIR, the router of another
checkout (a git worktree of an earlier commit) runs beside this one: before and after in the same
rounds. With --chunk-delay, chunks come apart in time as a model's tokens do, so each is a read of
its own. With --profile, the router runs under cProfile and its top entries are printed at the
end. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import signal
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from bench.checks.nginx_reference import nginx_binary, start_nginx
from bench.endpoints import free_port, router_command, start_server, wait_until_up_async

BODY = {
    "model": "fake-model",
    "stream": True,
    "messages": [{"role": "user", "content": "Stream me some chunks."}],
}


@dataclass
class Result:
    rps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_request: float = float("nan")  # the router's own CPU, routed runs only


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive_router(url: str, pids: list[int], concurrency: int, seconds: float) -> Result:
    before = sum(map(cpu_seconds, pids))
    result = await drive(url, concurrency, seconds)
    used = sum(map(cpu_seconds, pids)) - before
    return replace(result, cpu_ms_per_request=used * 1000 / max(result.requests, 1))


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
    upstream_port, router_port, nginx_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    router = f"http://127.0.0.1:{router_port}"
    with ExitStack() as stack:
        fake = [sys.executable, "-m", "bench.checks.fake_upstream", "--port", str(upstream_port)]
        fake += ["--chunks", str(args.chunks), "--chunk-delay", str(args.chunk_delay)]
        fake_upstream = start_server(fake, stack)
        flags = ("--replica", upstream, "--log-level", "warning")
        command = router_command(router_port, *flags)
        if args.profile:  # python -m cProfile -o FILE -m router ...: written at a clean exit
            command[1:1] = ["-m", "cProfile", "-o", str(args.profile)]
        router_process = start_server(command, stack)
        await wait_until_up_async(upstream + "/health", fake_upstream)
        await wait_until_up_async(router + "/ready", router_process)
        relays = [("router", router, [router_process.pid])]
        extra: dict[str, dict[str, float]] = {}  # the other relays' CPU and added TTFT
        for name, wanted, module, target in (
            ("floor", args.floor, "bench.checks.floor_proxy", upstream),
            ("raw", args.raw, "bench.checks.protocol_relay", f"127.0.0.1:{upstream_port}"),
        ):
            if wanted:
                port = free_port()
                command = [sys.executable, "-m", module, "--port", str(port), "--upstream", target]
                process = start_server(command, stack)
                await wait_until_up_async(f"http://127.0.0.1:{port}/ready", process)
                relays.append((name, f"http://127.0.0.1:{port}", [process.pid]))
        if args.baseline:  # the same router from another checkout: before and after, one run
            port = free_port()
            process = start_server(router_command(port, *flags), stack, cwd=args.baseline)
            await wait_until_up_async(f"http://127.0.0.1:{port}/ready", process)
            relays.append(("before", f"http://127.0.0.1:{port}", [process.pid]))
        if args.nginx:
            binary = nginx_binary()
            if binary is None:
                print("nginx: not installed and cannot be here; measured without it")
            else:
                pids = start_nginx(binary, nginx_port, f"127.0.0.1:{upstream_port}", stack)
                nginx = f"http://127.0.0.1:{nginx_port}"
                await wait_until_up_async(nginx + "/ready")
                relays.append(("nginx", nginx, pids))
        for _, url, _ in relays:  # warm every path up
            await drive(url + "/v1/chat/completions", 8, 1.0)
        await drive(upstream + "/v1/chat/completions", 8, 1.0)
        ratios: dict[str, dict[str, float]] = {
            "rps_ratio": {},
            "added_ttft_p50_ms": {},
            "router_cpu_ms_per_request": {},
        }
        header = ("conc", "target", "req/s", "ttft p50 ms", "ttft p99 ms", "cpu ms/req", "errors")
        widths = (5, 7, 9, 12, 12, 11, 7)
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
        for concurrency in args.concurrency:
            direct_runs: list[Result] = []
            relay_runs: dict[str, list[Result]] = {name: [] for name, _, _ in relays}
            for _ in range(args.rounds):  # alternate, so drift hits every side
                direct_runs.append(
                    await drive(upstream + "/v1/chat/completions", concurrency, args.seconds)
                )
                for name, url, pids in relays:
                    relay_runs[name].append(
                        await drive_router(
                            url + "/v1/chat/completions", pids, concurrency, args.seconds
                        )
                    )
            direct = median_of(direct_runs)
            medians = {name: median_of(runs) for name, runs in relay_runs.items()}
            routed = medians["router"]
            if args.verbose:
                print(
                    f"      runs req/s direct {[round(r.rps) for r in direct_runs]} "
                    f"router {[round(r.rps) for r in relay_runs['router']]} "
                    f"cpu ms/req {[round(r.cpu_ms_per_request, 3) for r in relay_runs['router']]}"
                )
            for name, r in (("direct", direct), *medians.items()):
                print(
                    f"{concurrency:>5} {name:>7} {r.rps:>9.1f} {r.ttft_p50_ms:>12.2f} "
                    f"{r.ttft_p99_ms:>12.2f} {r.cpu_ms_per_request:>11.3f} {r.errors:>7}"
                )
            key = str(concurrency)
            ratios["rps_ratio"][key] = round(routed.rps / direct.rps, 3)
            ratios["added_ttft_p50_ms"][key] = round(routed.ttft_p50_ms - direct.ttft_p50_ms, 3)
            ratios["router_cpu_ms_per_request"][key] = round(routed.cpu_ms_per_request, 4)
            for name, r in medians.items():
                if name != "router":
                    extra.setdefault(f"{name}_cpu_ms_per_request", {})[key] = round(
                        r.cpu_ms_per_request, 4
                    )
                    extra.setdefault(f"{name}_added_ttft_p50_ms", {})[key] = round(
                        r.ttft_p50_ms - direct.ttft_p50_ms, 3
                    )
        ratios.update(extra)
        router_process.send_signal(signal.SIGINT)  # a clean exit, so cProfile writes its file
        router_process.wait(timeout=30)
        return ratios


def median_of(runs: list[Result]) -> Result:
    """Each figure's median over the runs: one noisy slice of the machine does not decide."""
    return Result(
        rps=statistics.median(r.rps for r in runs),
        ttft_p50_ms=statistics.median(r.ttft_p50_ms for r in runs),
        ttft_p99_ms=statistics.median(r.ttft_p99_ms for r in runs),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        cpu_ms_per_request=statistics.median(r.cpu_ms_per_request for r in runs),
    )


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
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks per response")
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        help="seconds between chunks (0: back to back; a model streams a token every 5-50 ms)",
    )
    parser.add_argument("--profile", type=Path, help="run the router under cProfile into FILE")
    parser.add_argument("--top", type=int, default=25, help="profile entries printed")
    parser.add_argument("--floor", action="store_true", help="also measure a bare aiohttp relay")
    parser.add_argument(
        "--raw", action="store_true", help="also measure a relay on raw protocols (no aiohttp)"
    )
    parser.add_argument("--nginx", action="store_true", help="also measure nginx as a relay")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure the router of another checkout (e.g. a git worktree of the commit "
        "before a change) as 'before', in the same alternating rounds",
    )
    parser.add_argument("--verbose", action="store_true", help="print every run's figures")
    args = parser.parse_args()
    try:
        import uvloop

        ratios = uvloop.run(measure(args))
    except ImportError:  # pragma: no cover
        ratios = asyncio.run(measure(args))
    if args.profile:
        print(f"\nrouter profile ({args.profile}), by own time:")
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(args.top)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
