"""The router as a real process: what operators run."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import openai

from tests.conftest import RouterProcess, Upstreams, chat


async def test_two_routers_with_the_same_replicas_send_sessions_to_the_same_replicas(
    upstreams: Upstreams, router_process: Callable[[list[str]], RouterProcess]
) -> None:
    urls = [u for _, u in await upstreams(4)]
    a = router_process([arg for u in urls for arg in ("--replica", u)])
    b = router_process([arg for u in reversed(urls) for arg in ("--replica", u)])
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    placements: dict[str, list[str]] = {a.url: [], b.url: []}
    async with aiohttp.ClientSession() as session:
        for router in (a, b):
            for i in range(500):
                async with session.post(
                    router.url + "/v1/chat/completions",
                    json=chat("x", stream=False),
                    headers={"X-Session-Id": f"session-{i}"},
                ) as response:
                    assert response.status == 200
                    placements[router.url].append(response.headers["x-router-replica"])
    assert placements[a.url] == placements[b.url]
    assert len(set(placements[a.url])) == 4


async def test_sigterm_lets_an_open_stream_finish(
    upstreams: Upstreams, router_process: Callable[[list[str]], RouterProcess]
) -> None:
    ((fake, url),) = await upstreams(1, chunks=10, chunk_delay=0.2)
    router = router_process(["--replica", url, "--drain-seconds", "10"])
    await router.wait_ready()
    async with aiohttp.ClientSession() as session:
        async with session.post(router.url + "/v1/chat/completions", json=chat("s")) as response:
            await response.content.readline()
            router.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            body = await response.read()
    assert body.rstrip().endswith(b"data: [DONE]")
    assert fake.seen.completed == 1
    assert router.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 8


async def test_the_openai_sdk_streams_through_the_router(
    upstreams: Upstreams, router_process: Callable[[list[str]], RouterProcess]
) -> None:
    ups = await upstreams(2)
    router = router_process([arg for _, u in ups for arg in ("--replica", u)])
    await router.wait_ready()
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="sk-test")
    texts = []
    for _ in range(3):
        stream = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"X-Session-Id": "sdk-session"},
        )
        texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
    await client.close()
    assert texts[0].startswith("t0")
    served = [f for f, _ in ups if f.seen.requests]
    assert len(served) == 1  # every turn on one replica
    assert served[0].seen.requests[0]["headers"]["X-Session-Id"] == "sdk-session"
