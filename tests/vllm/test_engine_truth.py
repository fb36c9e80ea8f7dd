"""Engine truth against real vLLM engines (make test-vllm): the router's subscribers fill its
block index from the engines' KV-cache events, and the index, asked at routing time with the
router's own tokenization of the request, predicts the cached prefix vLLM then reports.

Sorts before test_through_router.py, whose last test kills an engine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from bench.endpoints import http
from bench.real.vllm_engines import EngineFleet, reset_prefix_cache
from router.app import FLEET, SUBSCRIBERS
from tests.conftest import RouterClient
from tests.vllm.test_through_router import BLOCK, opening, turn

pytestmark = pytest.mark.vllm

SESSIONS = 6
TURNS = 5


def flush_events(fleet: EngineFleet, bias: dict[str, float]) -> None:
    """A reset's AllBlocksCleared goes out with the engine's next step: give it one."""
    for url in fleet.urls:
        body = {
            "model": fleet.config.name,
            "messages": [{"role": "user", "content": "flush"}],
            "max_tokens": 1,
            "logit_bias": bias,
        }
        assert http("POST", url + "/v1/chat/completions", body, timeout=60)[0] == 200


async def router_with_engine_truth(router: RouterClient, fleet: EngineFleet) -> Any:
    """A router over the engines' event endpoints, with the served model's tokenizer."""
    return await router(
        [engine.replica_spec for engine in fleet.engines],
        scrape_interval=0.5,
        first_byte_timeout=60,
        idle_timeout=60,
        tokenizer=str(fleet.config.model_dir),
    )


async def settled(client: Any, timeout: float = 3.0, quiet: float = 0.3) -> None:
    """Until no event batch has arrived for `quiet` seconds: the last response's events are in."""
    subscribers = client.app[SUBSCRIBERS]

    def batches() -> int:
        return sum(row.batches for row in subscribers.rows())

    deadline = time.monotonic() + timeout
    seen, since = batches(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = batches()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


async def test_index_predicts_the_cached_tokens_vllm_reports_for_every_turn(
    vllm_engines: EngineFleet, router: RouterClient, logit_bias: dict[str, float]
) -> None:
    for url in vllm_engines.urls:
        reset_prefix_cache(url)
    flush_events(vllm_engines, logit_bias)
    client = await router_with_engine_truth(router, vllm_engines)
    fleet = client.app[FLEET]
    assert fleet.prompts is not None
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    await settled(client)
    histories = {f"truth-{i}": opening(f"truth-{i}") for i in range(SESSIONS)}
    results: list[tuple[str, int, int, int, int]] = []  # session, turn, prompt, predicted, cached
    for n in range(TURNS):
        for session, messages in histories.items():
            # Routing time: the router's tokenization and its index, before the engine sees it.
            tokens = fleet.prompts.request_tokens("/v1/chat/completions", {"messages": messages})
            assert tokens is not None
            predicted = fleet.blocks.cached_tokens(tokens)
            answer, replica, usage = await turn(
                sdk, vllm_engines.config.name, messages, session, logit_bias
            )
            assert usage.prompt_tokens == len(tokens)  # vLLM prefilled the tokens we computed
            cached = usage.prompt_tokens_details.cached_tokens
            results.append((session, n, len(tokens), predicted[replica], cached))
            histories[session] = [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"And what about fact {n}?"},
            ]
            await settled(client)
    matched = sum(1 for *_, predicted, cached in results if predicted == cached)
    hits = sum(1 for *_, cached in results if cached)
    print(
        f"\nengine truth: the index predicted vLLM's cached_tokens for {matched}/{len(results)} "
        f"requests ({hits} with a cache hit); misses: "
        f"{[r for r in results if r[3] != r[4]]}"
    )
    assert hits >= SESSIONS * (TURNS - 1)
    assert matched >= 0.99 * len(results), results
    status = await (await client.get("/router/replicas")).json()
    for row in status["replicas"]:
        events = row["kv_events"]
        assert events["connected"], row
        assert events["block_size"] == 32
        assert events["capacity_blocks"] > 0  # num_gpu_blocks, scraped from /metrics
        for rank in events["ranks"]:
            assert rank["lag_s"] is not None and rank["lag_s"] < 2.0, rank
    lags = [rank["lag_s"] for row in status["replicas"] for rank in row["kv_events"]["ranks"]]
    print(f"subscriber lag of the last batch per engine: {lags} s")


async def test_a_router_started_mid_run_sends_every_later_turn_to_the_engine_holding_it(
    vllm_engines: EngineFleet, router: RouterClient, logit_bias: dict[str, float]
) -> None:
    """No session header: router A places the conversations' first turns; router B, started
    after them, has seen none of them and finds each one's engine from the KV events alone."""
    for url in vllm_engines.urls:
        reset_prefix_cache(url)
    flush_events(vllm_engines, logit_bias)
    first = await router_with_engine_truth(router, vllm_engines)
    sdk_a = openai.AsyncOpenAI(base_url=str(first.make_url("/v1")), api_key="unused", max_retries=0)
    await settled(first)
    model, names = vllm_engines.config.name, [f"midrun-{i}" for i in range(SESSIONS)]
    histories = {name: opening(name) for name in names}
    served: dict[str, str] = {}

    async def step(
        sdk: openai.AsyncOpenAI, name: str, n: int, routes: dict[str, str] | None = None
    ) -> Any:
        answer, replica, usage = await turn(
            sdk, model, histories[name], name, logit_bias, header=False, routes=routes
        )
        served.setdefault(name, replica)
        histories[name] = [
            *histories[name],
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"And what about fact {n}?"},
        ]
        return replica, usage

    for n in range(2):  # two turns of every conversation through router A
        for name in names:
            await step(sdk_a, name, n)
    second = await router_with_engine_truth(
        router, vllm_engines
    )  # started mid-run: it has routed nothing
    sdk_b = openai.AsyncOpenAI(
        base_url=str(second.make_url("/v1")), api_key="unused", max_retries=0
    )
    fleet_b = second.app[FLEET]
    assert fleet_b.prompts is not None
    # B routes as soon as it is up, but the test is about engine truth once B has caught up:
    # until B's index holds each conversation as A's does (the replay of everything the engines
    # published since they started, the previous test's turns included, takes a moment).
    index_a, index_b = first.app[FLEET].blocks, fleet_b.blocks
    for name in names:
        tokens = fleet_b.prompts.request_tokens(
            "/v1/chat/completions", {"messages": histories[name]}
        )
        assert tokens is not None
        held = index_a.cached_tokens(tokens).get(served[name], 0)
        assert held > BLOCK, (name, held)  # more than the opening all conversations share
        deadline = time.monotonic() + 10
        while index_b.cached_tokens(tokens).get(served[name], 0) < held:
            assert time.monotonic() < deadline, name
            await asyncio.sleep(0.05)
    routes_b: dict[str, str] = {}
    outcomes: list[tuple[str, int, str, str, int]] = []  # name, turn, engine, route, cached
    for n in range(2, TURNS):
        for name in names:
            replica, usage = await step(sdk_b, name, n, routes_b)
            outcomes.append(
                (name, n, replica, routes_b[name], usage.prompt_tokens_details.cached_tokens)
            )
    print(
        f"\nrouter started mid-run: first turns on {sorted(served.values())}; later turns "
        f"through it: {[(n, t, r.rsplit(':', 1)[-1], route, c) for n, t, r, route, c in outcomes]}"
    )
    for name, n, replica, route, cached in outcomes:
        assert replica == served[name], (name, n, route)
        assert cached > 0, (name, n, route)
