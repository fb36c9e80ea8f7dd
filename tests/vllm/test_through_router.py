"""The router in front of two real vLLM engines (make test-vllm).

The last test kills an engine: it must stay last in this file, and this file must sort last.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import openai
import pytest

from bench.real.vllm_engines import EngineFleet, reset_prefix_cache
from router.scraper import parse_vllm_metrics
from tests.conftest import RouterClient

pytestmark = pytest.mark.vllm

BLOCK = 32  # the engines' --block-size


def opening(session: str) -> list[dict[str, Any]]:
    # ~500 tokens of context, different per session: the engines cache it per conversation.
    words = " ".join(f"{session}-{i % 97} fact{i}" for i in range(60))
    return [
        {"role": "system", "content": "You answer questions about the notes below."},
        {"role": "user", "content": f"Notes: {words}\nWhat is the first fact?"},
    ]


async def engine_counters(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    async with session.get(url + "/metrics") as response:
        sample = parse_vllm_metrics(await response.text())
    return sample.queries, sample.hits


async def settled_counters(
    session: aiohttp.ClientSession, url: str, before: tuple[float, float]
) -> tuple[float, float]:
    """Engine stats land shortly after the response; wait for this request's to arrive."""
    for _ in range(60):
        counters = await engine_counters(session, url)
        if counters[0] > before[0]:
            return counters
        await asyncio.sleep(0.05)
    return counters


async def turn(
    sdk: openai.AsyncOpenAI,
    model: str,
    messages: list[dict[str, Any]],
    session: str,
    bias: dict[str, float],
    max_tokens: int = 12,
    started: asyncio.Event | None = None,
    extra: dict[str, Any] | None = None,
    served_by: dict[str, str] | None = None,
    header: bool = True,
    routes: dict[str, str] | None = None,
) -> tuple[str, str, Any]:
    """One streamed turn through the router; returns (answer, replica, usage).

    `started` is set once content has arrived; `extra` adds vLLM fields to the body; without
    `header` no session id is sent (the router keys on the prompt); `routes` collects each
    session's last route (x-router-route)."""
    params: Any = messages
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model,
        messages=params,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"logit_bias": bias, **(extra or {})},  # vLLM takes float biases
        extra_headers={"X-Session-Id": session} if header else None,
    )
    replica = raw.headers["x-router-replica"]
    if served_by is not None:
        served_by[session] = replica
    if routes is not None:
        routes[session] = raw.headers["x-router-route"]
    answer, usage = [], None
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            answer.append(chunk.choices[0].delta.content)
            if started is not None:
                started.set()
        if chunk.usage is not None:
            usage = chunk.usage
    return "".join(answer), replica, usage


@pytest.fixture
async def sdk_and_router(
    vllm_engines: EngineFleet, router: RouterClient
) -> tuple[openai.AsyncOpenAI, Any]:
    for url in vllm_engines.urls:
        reset_prefix_cache(url)
    client = await router(
        vllm_engines.urls, scrape_interval=0.3, first_byte_timeout=60, idle_timeout=60
    )
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    return sdk, client


async def test_streaming_chat_and_completions_are_relayed(
    vllm_engines: EngineFleet,
    sdk_and_router: tuple[openai.AsyncOpenAI, Any],
    logit_bias: dict[str, float],
) -> None:
    sdk, _ = sdk_and_router
    answer, replica, usage = await turn(
        sdk, vllm_engines.config.name, opening("relay"), "relay", logit_bias
    )
    assert answer.strip()
    assert replica in vllm_engines.urls
    assert usage.completion_tokens == 12
    stream = await sdk.completions.create(
        model=vllm_engines.config.name,
        prompt="Once upon a time",
        max_tokens=8,
        stream=True,
        temperature=0.0,
        extra_body={"logit_bias": logit_bias},
    )
    assert isinstance(stream, openai.AsyncStream)
    pieces = [c.choices[0].text async for c in stream if c.choices]
    assert len(pieces) >= 2  # relayed as a stream, not one body
    assert "".join(pieces).strip()


async def test_turns_of_a_session_stay_on_one_engine_and_hit_its_cache(
    vllm_engines: EngineFleet,
    sdk_and_router: tuple[openai.AsyncOpenAI, Any],
    logit_bias: dict[str, float],
) -> None:
    sdk, _ = sdk_and_router
    messages = opening("growing")
    replicas, previous_prompt = set(), 0
    async with aiohttp.ClientSession() as http:
        for n in range(4):
            before = {url: await engine_counters(http, url) for url in vllm_engines.urls}
            answer, replica, usage = await turn(
                sdk, vllm_engines.config.name, messages, "growing", logit_bias
            )
            replicas.add(replica)
            after = await settled_counters(http, replica, before[replica])
            hits = after[1] - before[replica][1]
            cached = usage.prompt_tokens_details.cached_tokens
            # The engine's own counter grew by what the client was told was cached ...
            assert hits == cached
            # ... which covers the previous turns' full blocks.
            if n:
                assert cached >= (previous_prompt // BLOCK) * BLOCK
                assert cached % BLOCK == 0
            else:
                assert cached == 0
            other = next(u for u in vllm_engines.urls if u != replica)
            assert await engine_counters(http, other) == before[other]
            previous_prompt = usage.prompt_tokens
            messages = [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"And fact {n}?"},
            ]
    assert len(replicas) == 1


async def test_scraped_hit_ratio_and_load_agree_with_the_engines(
    vllm_engines: EngineFleet,
    sdk_and_router: tuple[openai.AsyncOpenAI, Any],
    logit_bias: dict[str, float],
) -> None:
    sdk, client = sdk_and_router
    for session in ("s-a", "s-b", "s-c", "s-d"):
        messages = opening(session)
        for n in range(2):
            answer, _, _ = await turn(sdk, vllm_engines.config.name, messages, session, logit_bias)
            messages = [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"q{n}"},
            ]
    await asyncio.sleep(1.0)  # two scrapes: both counters and the interval ratio have settled
    status = {
        r["url"]: r for r in (await (await client.get("/router/replicas")).json())["replicas"]
    }
    async with aiohttp.ClientSession() as http:
        for url in vllm_engines.urls:
            async with http.get(url + "/metrics") as response:
                engine = parse_vllm_metrics(await response.text())
            row = status[url]
            assert row["prefix_cache_queries_total"] == engine.queries
            assert row["prefix_cache_hits_total"] == engine.hits
            assert row["requests_running"] == engine.running == 0
            assert row["requests_waiting"] == engine.waiting == 0
            assert row["kv_cache_usage"] == pytest.approx(engine.kv_usage, abs=1e-6)


async def test_killing_an_engine_fails_its_sessions_over_with_clean_errors(
    vllm_engines: EngineFleet, router: RouterClient, logit_bias: dict[str, float]
) -> None:
    """Runs last: it leaves one engine dead."""
    # Bounded loads off: six long streams on one engine must stay there to see the kill.
    client = await router(vllm_engines.urls, load_factor=100.0, first_byte_timeout=60)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    homes: dict[str, str] = {}
    for i in range(8):
        _, replica, _ = await turn(
            sdk, vllm_engines.config.name, opening(f"k{i}"), f"k{i}", logit_bias, 2
        )
        homes[f"k{i}"] = replica
    victim_url = vllm_engines.urls[0]
    victims = [s for s, u in homes.items() if u == victim_url]
    assert victims, homes
    victim = vllm_engines.engines[0]

    served_by: dict[str, str] = {}
    usages: dict[str, Any] = {}  # what a stream that finished got: cut short, or whole?

    async def long_stream(session: str, started: asyncio.Event) -> str:
        try:
            # ignore_eos: the random-weight model must not end the stream before the kill.
            _, _, usages[session] = await turn(
                sdk, vllm_engines.config.name, opening(session), session, logit_bias, 1200,
                started, {"ignore_eos": True}, served_by,
            )  # fmt: skip
        except openai.APIError as error:
            return f"error: {error.message}"
        return "finished"

    events = [asyncio.Event() for _ in victims]
    in_flight = [
        asyncio.create_task(long_stream(s, e)) for s, e in zip(victims, events, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout=30)
    running = {s for s, t in zip(victims, in_flight, strict=True) if not t.done()}
    os.killpg(victim.process.pid, signal.SIGKILL)
    outcomes = dict(
        zip(victims, await asyncio.wait_for(asyncio.gather(*in_flight), 60), strict=True)
    )
    report = {s: (served_by.get(s), outcomes[s], s in running, usages.get(s)) for s in victims}
    on_victim = {s for s in running if served_by.get(s) == victim_url}
    assert on_victim, report  # some streams were mid-stream on the engine that was killed
    for session in on_victim:
        assert outcomes[session].startswith("error"), report  # a clean error, not a hang
    for session in victims:
        if served_by.get(session) != victim_url:
            assert outcomes[session] == "finished", report
    # The next turns of those sessions go to the surviving engine and succeed.
    for session in victims:
        answer, replica, _ = await turn(
            sdk, vllm_engines.config.name, opening(session), session, logit_bias, 4
        )
        assert replica == vllm_engines.urls[1]
        assert answer.strip()
    for session, home in homes.items():
        if home != victim_url:
            _, replica, _ = await turn(
                sdk, vllm_engines.config.name, opening(session), session, logit_bias, 2
            )
            assert replica == home  # sessions of the healthy engine did not move
