"""The mock replica over real HTTP: cache hits, timing, streaming, metrics and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench.mock_vllm import MockOptions, build_app
from bench.mock_vllm.server import REPLICA
from bench.runner.counters import metric_totals

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

# ~1,500 tokens: words of the mock's vocabulary are one token each (other text falls back to
# smaller pieces, down to bytes).
LONG_CONTEXT = " ".join(f"token {i} is in block {i % 7}." for i in range(215))


def options(**overrides: Any) -> MockOptions:
    return MockOptions(profile="test-fast", model="mock", **overrides)


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "mock", "messages": messages, "max_tokens": 8, **extra}


async def timed_post(client: Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    async with client.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    return data, time.perf_counter() - started


def metric(text: str, name: str) -> float:
    return metric_totals(text).get(name, 0.0)


async def test_second_identical_prompt_is_cached_and_faster(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_app(options()))
    body = chat([{"role": "user", "content": LONG_CONTEXT}], max_tokens=1)
    first, cold = await timed_post(client, body)
    second, warm = await timed_post(client, body)
    prompt = first["usage"]["prompt_tokens"]
    assert prompt > 1000
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == (prompt - 1) // 16 * 16
    assert warm < cold - 0.01  # ~20 ms of prefill saved at 50k tokens/s


async def test_turn_two_reuses_turn_one_blocks(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_app(options()))
    turn1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": LONG_CONTEXT}]
    data1, _ = await timed_post(client, chat(turn1, max_tokens=40))
    answer = data1["choices"][0]["message"]["content"]
    turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
    data2, _ = await timed_post(client, chat(turn2))
    usage1, usage2 = data1["usage"], data2["usage"]
    # everything of turn 1's prompt and answer that filled a block is reused
    assert usage2["prompt_tokens_details"]["cached_tokens"] == (
        (usage1["prompt_tokens"] + usage1["completion_tokens"]) // 16 * 16
    )


async def test_counters_in_metrics_match_usage(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_app(options()))
    usages = []
    for i in range(3):
        body = chat([{"role": "user", "content": LONG_CONTEXT + str(i % 2)}], max_tokens=5 + i)
        usages.append((await timed_post(client, body))[0]["usage"])
    async with client.get("/metrics") as resp:
        text = await resp.text()
    labels = 'engine="0",model_name="mock"'
    assert f"vllm:prefix_cache_queries_total{{{labels}}}" in text
    assert "_created" not in text
    prompt = sum(u["prompt_tokens"] for u in usages)
    assert metric(text, "vllm:prefix_cache_queries_total") == prompt
    assert metric(text, "vllm:prompt_tokens_total") == prompt
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert cached > 0 and metric(text, "vllm:prefix_cache_hits_total") == cached
    generated = sum(u["completion_tokens"] for u in usages)
    assert metric(text, "vllm:generation_tokens_total") == generated
    assert metric(text, "vllm:time_to_first_token_seconds_count") == 3
    assert 'le="2560.0"' in text and 'le="0.001"' in text
    assert re.search(r'vllm:cache_config_info\{[^}]*block_size="16"[^}]*\} 1\.0', text)
    assert metric(text, "vllm:num_requests_running") == 0
    assert metric(text, "vllm:kv_cache_usage_perc") == 0


async def test_round_robin_over_two_replicas_hits_the_cache_less(
    aiohttp_client: ClientFactory,
) -> None:
    async def session_hit_ratio(replicas: list[Client]) -> float:
        history: list[dict[str, Any]] = [{"role": "system", "content": LONG_CONTEXT}]
        queries = hits = 0
        for turn in range(6):
            history.append({"role": "user", "content": f"Question {turn}?"})
            data, _ = await timed_post(replicas[turn % len(replicas)], chat(history))
            history.append(
                {"role": "assistant", "content": data["choices"][0]["message"]["content"]}
            )
            queries += data["usage"]["prompt_tokens"]
            hits += data["usage"]["prompt_tokens_details"]["cached_tokens"]
        return hits / queries

    a, b, c = [await aiohttp_client(build_app(options())) for _ in range(3)]
    sticky = await session_hit_ratio([a])
    round_robin = await session_hit_ratio([b, c])
    # each replica still holds the shared first turn, so round robin loses the later turns only
    assert sticky > 0.75
    assert round_robin < sticky - 0.1


async def test_stream_arrives_incrementally_at_the_decode_rate(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(build_app(options()))
    body = chat(
        [{"role": "user", "content": "Stream, please."}],
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    events: list[str] = []
    async with client.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].decode().strip())
                arrivals.append(time.perf_counter())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks[1:] if c["choices"]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == 30
    assert len(content) > 10  # incremental, not one burst
    spread = arrivals[len(content)] - arrivals[1]
    assert spread > 0.8 * 29 * 0.002  # 29 decode steps of >= 2 ms after the first token
    assert text


async def test_max_tokens_and_max_completion_tokens_are_honoured(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(build_app(options()))
    msgs = [{"role": "user", "content": "Hi"}]
    data, _ = await timed_post(client, chat(msgs, max_tokens=3))
    assert data["usage"]["completion_tokens"] == 3
    assert data["choices"][0]["finish_reason"] == "length"
    body = {"messages": msgs, "max_completion_tokens": 2}
    data, _ = await timed_post(client, body)
    assert data["usage"]["completion_tokens"] == 2
    async with client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 4}) as resp:
        done = await resp.json()
    assert done["object"] == "text_completion" and done["usage"]["completion_tokens"] == 4


async def test_invalid_requests_get_vllm_error_objects(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_app(options()))
    bad_bodies: list[bytes] = [
        b"{not json",
        b"[]",
        json.dumps({"model": "mock"}).encode(),
        json.dumps({"messages": "hi"}).encode(),
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}).encode(),
    ]
    for raw in bad_bodies:
        async with client.post("/v1/chat/completions", data=raw) as resp:
            assert resp.status == 400, raw
            error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "BadRequestError" and error["code"] == 400
    async with client.post("/v1/completions", json={"max_tokens": 3}) as resp:
        assert resp.status == 400


async def test_models_health_and_reset(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_app(options()))
    async with client.get("/v1/models") as resp:
        assert (await resp.json())["data"][0]["id"] == "mock"
    async with client.get("/health") as resp:
        assert resp.status == 200
    body = chat([{"role": "user", "content": LONG_CONTEXT}], max_tokens=1)
    await timed_post(client, body)
    async with client.post("/reset_prefix_cache") as resp:
        assert resp.status == 200
    data, _ = await timed_post(client, body)
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_client_disconnect_aborts_and_frees_blocks() -> None:
    app = build_app(options())
    server = TestServer(app)
    await server.start_server()
    try:
        body = chat([{"role": "user", "content": LONG_CONTEXT}], max_tokens=2000, stream=True)
        async with aiohttp.ClientSession() as session:
            resp = await session.post(server.make_url("/v1/chat/completions"), json=body)
            await resp.content.readline()
            resp.close()  # the client goes away mid-stream
        scheduler = app[REPLICA].engine.scheduler
        for _ in range(100):
            if not scheduler.running:
                break
            await asyncio.sleep(0.02)
        assert not scheduler.running and scheduler.cache.usage == 0.0
    finally:
        await server.close()


async def test_requests_wait_for_kv_blocks(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_app(options(kv_blocks=120)))
    replica = client.app[REPLICA]
    bodies = [
        chat([{"role": "user", "content": str(i) + LONG_CONTEXT}], max_tokens=20) for i in range(3)
    ]
    tasks = [asyncio.create_task(timed_post(client, b)) for b in bodies]
    waited = False  # ~90 blocks each: one runs at a time, the others wait
    for _ in range(200):  # up to 2 s for the requests to arrive (a busy machine is slow)
        waited = waited or bool(replica.engine.scheduler.waiting)
        if waited or all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    assert waited
    results = await asyncio.gather(*tasks)
    assert all(r[0]["usage"]["completion_tokens"] == 20 for r in results)
    assert replica.engine.scheduler.cache.evictions > 0


async def test_waiting_non_streaming_request_is_aborted_when_client_leaves() -> None:
    app = build_app(options())
    server = TestServer(app)
    await server.start_server()
    try:
        body = chat([{"role": "user", "content": LONG_CONTEXT}], max_tokens=2000)
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(asyncio.TimeoutError):
                await session.post(
                    server.make_url("/v1/chat/completions"),
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=0.1),
                )
        scheduler = app[REPLICA].engine.scheduler
        for _ in range(100):
            if not scheduler.running and not scheduler.waiting:
                break
            await asyncio.sleep(0.02)
        assert not scheduler.running and scheduler.cache.usage == 0.0
    finally:
        await server.close()
