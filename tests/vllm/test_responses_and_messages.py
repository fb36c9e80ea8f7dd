"""Stored Responses and the Anthropic Messages API through the router, over two real vLLM engines
started with VLLM_ENABLE_RESPONSES_API_STORE=1 (make test-vllm; tests/vllm/conftest.py).

vLLM keeps each stored response in the memory of the engine that served it: every turn of a
chain (`previous_response_id`) and every read of a stored response must reach that engine,
through any router instance, with no session header.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from prometheus_client import REGISTRY

from bench.real.vllm_engines import EngineFleet
from tests.conftest import RouterClient

pytestmark = pytest.mark.vllm

CHAINS = 16
TURNS = 4


def stored_events(event: str) -> float:
    return REGISTRY.get_sample_value("router_stored_responses_total", {"event": event}) or 0.0


async def start_routers(vllm_engines: EngineFleet, router: RouterClient, count: int) -> list[Any]:
    """Router instances over the same engines, sharing nothing."""
    settings = {"first_byte_timeout": 120, "idle_timeout": 120}
    return [await router(vllm_engines.urls, **settings) for _ in range(count)]


def sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0, timeout=120
    )


async def run_chain(
    responses: openai.AsyncOpenAI, model: str, chain: int, failures: list[str]
) -> list[tuple[str, str]]:
    """One chain of TURNS turns with the openai SDK, each continuing the last by
    previous_response_id; streamed or not by chain. Returns (response id, engine) per turn."""
    turns: list[tuple[str, str]] = []
    previous: str | None = None
    for turn in range(TURNS):
        question = f"Chain {chain}, turn {turn}: name a colour." if turn else f"Chain {chain}: hi."
        try:
            kwargs: dict[str, Any] = {
                "model": model,
                "input": question,
                "max_output_tokens": 8,
                "temperature": 0.0,
            }
            if previous is not None:
                kwargs["previous_response_id"] = previous
            if chain % 2:
                raw = await responses.responses.with_raw_response.create(**kwargs)
                response_id = raw.parse().id
            else:
                raw = await responses.responses.with_raw_response.create(**kwargs, stream=True)
                response_id = ""
                async for event in raw.parse():
                    if event.type == "response.completed":
                        response_id = event.response.id
            assert response_id.startswith("resp_"), response_id
        except (openai.APIError, AssertionError) as error:
            failures.append(f"chain {chain} turn {turn}: {error}")
            return turns
        turns.append((response_id, raw.headers["x-router-replica"]))
        previous = response_id
    return turns


async def get_all(client: Any, ids: list[str]) -> dict[str, tuple[int, str]]:
    """GET /v1/responses/{id} of every id through `client`: status and engine."""

    async def get(response_id: str) -> tuple[int, str]:
        response = await client.get(f"/v1/responses/{response_id}")
        body = await response.json()
        assert response.status != 200 or body["id"] == response_id
        return response.status, response.headers.get("x-router-replica", "")

    answers = await asyncio.gather(*(get(i) for i in ids))
    return dict(zip(ids, answers, strict=True))


async def test_responses_chains_and_reads_reach_the_engine_holding_them_through_any_router(
    vllm_engines: EngineFleet, router: RouterClient
) -> None:
    first, second = await start_routers(vllm_engines, router, 2)
    model = vllm_engines.config.name
    failures: list[str] = []
    chains = await asyncio.gather(
        *(run_chain(sdk(first), model, n, failures) for n in range(CHAINS))
    )
    assert not failures, failures
    for turns in chains:  # each turn ran on the engine holding the response it continued
        assert len({engine for _, engine in turns}) == 1, turns
    assert len({turns[0][1] for turns in chains}) == 2  # the chains used both engines
    last = {turns[-1][0]: turns[-1][1] for turns in chains}

    located = stored_events("located")
    through_first = await get_all(first, list(last))
    assert {status for status, _ in through_first.values()} == {200}
    assert stored_events("located") == located  # the first router learned every id it relayed

    through_second = await get_all(second, list(last))  # it relayed none of them
    again = await get_all(second, list(last))
    assert {status for status, _ in (*through_second.values(), *again.values())} == {200}
    assert {i: engine for i, (_, engine) in through_second.items()} == last
    assert stored_events("located") - located == CHAINS  # each id located once
    print(
        f"\n{CHAINS} chains x {TURNS} turns: 0 failures; GET of {len(last)} last responses: "
        f"0 failures through the relaying router, 0 through a second one "
        f"({stored_events('located') - located:.0f} ids located, once each)"
    )


async def test_a_chain_can_alternate_between_router_instances(
    vllm_engines: EngineFleet, router: RouterClient
) -> None:
    routers = await start_routers(vllm_engines, router, 2)
    model = vllm_engines.config.name
    previous: str | None = None
    engines = set()
    for turn in range(4):
        through = sdk(routers[turn % 2])
        kwargs: dict[str, Any] = {"model": model, "input": f"turn {turn}", "max_output_tokens": 4}
        if previous is not None:
            kwargs["previous_response_id"] = previous
        raw = await through.responses.with_raw_response.create(**kwargs)
        previous = raw.parse().id
        engines.add(raw.headers["x-router-replica"])
        if turn:
            assert raw.headers["x-router-route"] == "none/stored_response"
    assert len(engines) == 1


async def test_an_unknown_response_id_gets_vllms_own_404(
    vllm_engines: EngineFleet, router: RouterClient
) -> None:
    (client,) = await start_routers(vllm_engines, router, 1)
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk(client).responses.create(
            model=vllm_engines.config.name,
            input="hi",
            previous_response_id="resp_0000000000000000000000000000dead",
        )
    assert "resp_0000000000000000000000000000dead" in str(raised.value)
    response = await client.get("/v1/responses/resp_nobody")
    assert response.status == 404
    body = await response.json()
    assert body["error"]["message"] == "Response with id 'resp_nobody' not found."


async def test_claude_code_sessions_and_subagents_through_the_anthropic_sdk(
    vllm_engines: EngineFleet, router: RouterClient
) -> None:
    (client,) = await start_routers(vllm_engines, router, 1)
    claude = anthropic.AsyncAnthropic(
        base_url=str(client.make_url("")), api_key="unused", max_retries=0, timeout=120
    )
    session = "5a1e0000-0000-4000-8000-00000000c0de"
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": session})
    engines: dict[str, set[str]] = {}
    for agent in ("", "agent-1", "agent-2"):
        headers = {"X-Claude-Code-Session-Id": session}
        if agent:
            headers["X-Claude-Code-Agent-Id"] = agent
        messages: list[Any] = [{"role": "user", "content": f"{agent or 'main'}: read TASK.md"}]
        for turn in range(3):
            raw = await claude.messages.with_raw_response.create(
                model=vllm_engines.config.name,
                max_tokens=6,
                system=[{"type": "text", "text": "You are a coding agent."}],
                messages=messages,
                metadata={"user_id": user_id},
                extra_headers=headers,
            )
            message = await raw.parse()
            assert message.type == "message" and message.role == "assistant"
            assert raw.headers["x-router-route"].startswith("header/")
            engines.setdefault(agent, set()).add(raw.headers["x-router-replica"])
            text = "".join(block.text for block in message.content if block.type == "text")
            messages += [
                {"role": "assistant", "content": text or "..."},
                {"role": "user", "content": f"step {turn}"},
            ]
    assert all(len(used) == 1 for used in engines.values()), engines
    # Streamed too, through the SDK's stream helper.
    async with claude.messages.stream(
        model=vllm_engines.config.name,
        max_tokens=6,
        messages=[{"role": "user", "content": "main: read TASK.md"}],
        extra_headers={"X-Claude-Code-Session-Id": session},
    ) as stream:
        final = await stream.get_final_message()
    assert final.usage.output_tokens > 0


async def test_tokenize_and_detokenize_reach_an_engine(
    vllm_engines: EngineFleet, router: RouterClient
) -> None:
    (client,) = await start_routers(vllm_engines, router, 1)
    model = vllm_engines.config.name
    response = await client.post("/tokenize", json={"model": model, "prompt": "Hello there"})
    assert response.status == 200, await response.text()
    tokens = (await response.json())["tokens"]
    assert tokens and response.headers["x-router-route"].startswith("prefix/")
    response = await client.post("/detokenize", json={"model": model, "tokens": tokens})
    assert response.status == 200
    async with aiohttp.ClientSession() as http:
        async with http.post(
            vllm_engines.urls[0] + "/detokenize", json={"model": model, "tokens": tokens}
        ) as direct:
            assert (await response.json())["prompt"] == (await direct.json())["prompt"]
