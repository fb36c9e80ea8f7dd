"""Can one mock process serve many concurrent streams at speed 1 without its CPU being the limit?

Starts ``python -m bench.mock_vllm`` as a subprocess, opens N concurrent streaming chat requests
from this process, and reports the mock's achieved versus modelled step time, its CPU use, and
the inter-chunk gaps clients saw against the modelled step time.

    python -m bench.checks.mock_load_check --sessions 200 --answer-tokens 300
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
from typing import Any

import aiohttp

from bench.endpoints import free_port, wait_until_up_async


async def one_stream(
    session: aiohttp.ClientSession, url: str, i: int, answer_tokens: int
) -> list[float]:
    body = {
        "messages": [{"role": "user", "content": f"Session {i}: " + "tell me more. " * 100}],
        "max_tokens": answer_tokens,
        "stream": True,
    }
    stamps: list[float] = []
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        # one timestamp per network read that carried content (cheap for the client)
        async for data in resp.content.iter_any():
            if b'"content":"' in data:
                stamps.append(time.perf_counter())
    return stamps


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/mock/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def check(sessions: int, answer_tokens: int, profile: str) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mock = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.mock_vllm",
            "--port",
            str(port),
            "--profile",
            profile,
            "--min-answer-tokens",
            "4096",
            "--max-answer-tokens",
            "4096",
        ]
    )
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_until_up_async(url + "/health", mock, timeout=10.0)
            before = await stats(session, url)
            started = time.perf_counter()
            streams = await asyncio.gather(
                *(one_stream(session, url, i, answer_tokens) for i in range(sessions))
            )
            elapsed = time.perf_counter() - started
            after = await stats(session, url)
    finally:
        mock.terminate()
        mock.wait(timeout=10)
    steps = after["steps"] - before["steps"]
    modelled = after["modelled_seconds"] - before["modelled_seconds"]
    achieved = after["busy_wall_seconds"] - before["busy_wall_seconds"]
    cpu = after["process_cpu_seconds"] - before["process_cpu_seconds"]
    wall = after["wall_seconds"] - before["wall_seconds"]
    gaps = [b - a for s in streams for a, b in itertools.pairwise(s)]
    tokens_per_read = sessions * answer_tokens / max(1, sum(len(s) for s in streams))
    return {
        "sessions": sessions,
        "answer_tokens": answer_tokens,
        "elapsed_s": round(elapsed, 2),
        "steps": steps,
        "modelled_step_ms": round(1e3 * modelled / max(steps, 1), 3),
        "achieved_step_ms": round(1e3 * achieved / max(steps, 1), 3),
        "achieved_over_modelled": round(achieved / modelled, 3) if modelled else None,
        "late_steps": after["late_steps"] - before["late_steps"],
        "mock_cpu_percent": round(100 * cpu / wall, 1),
        "gap_p50_ms": round(1e3 * statistics.median(gaps), 3),
        "gap_p99_ms": round(1e3 * statistics.quantiles(gaps, n=100)[98], 3),
        "tokens_per_client_read": round(tokens_per_read, 3),
        "completed_streams": sum(1 for s in streams if s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--answer-tokens", type=int, default=300)
    parser.add_argument("--profile", default="llama-3-8b-h100")
    args = parser.parse_args()
    result = asyncio.run(check(args.sessions, args.answer_tokens, args.profile))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
