"""Engine truth in routing, end to end on 127.0.0.1: mock replicas publish their KV-cache events,
and a router that has not seen a conversation finds the replica that holds it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bench.endpoints import free_port
from bench.mock_vllm import MockOptions, start_server
from bench.mock_vllm.tokenizer import TOKENIZER_FOLDER
from router.app import FLEET
from tests.conftest import RouterClient

CHAT = "/v1/chat/completions"


@pytest.fixture
async def mock_specs() -> AsyncIterator[list[str]]:
    """Two mock replicas publishing KV events; their --replica specs for the router."""
    mocks, specs = [], []
    for _ in range(2):
        events, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        config = (
            '{"enable_kv_cache_events": true, "publisher": "zmq", '
            f'"endpoint": "{events}", "replay_endpoint": "{replay}", "topic": "kv"}}'
        )
        mock = await start_server(
            MockOptions(port=0, profile="test-fast", model="mock", kv_events_config=config)
        )
        mocks.append(mock)
        specs.append(f"{mock.url}#kv_events={events}&kv_replay={replay}")
    yield specs
    for mock in mocks:
        await mock.close()


def conversation(name: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": f"{name} " + "document cache block token " * 60},
    ]


async def ask(
    http: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]], session: str | None
) -> tuple[str, str, dict[str, Any]]:
    headers = {"X-Session-Id": session} if session else {}
    body = {"model": "mock", "messages": messages, "max_tokens": 16, "stream": False}
    async with http.post(base + CHAT, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
        return response.headers["x-router-replica"], response.headers["x-router-route"], answer


@pytest.mark.parametrize("session_header", [True, False])
async def test_a_second_router_finds_every_conversation_where_the_first_put_it(
    router: RouterClient, mock_specs: list[str], session_header: bool
) -> None:
    truth = {"scrape_interval": 0.2, "tokenizer": str(TOKENIZER_FOLDER)}
    first, second = await router(mock_specs, **truth), await router(mock_specs, **truth)
    base_a, base_b = str(first.make_url("")).rstrip("/"), str(second.make_url("")).rstrip("/")
    names = [f"conv-{i}" for i in range(8)]
    async with aiohttp.ClientSession() as http:
        served: dict[str, str] = {}
        histories = {}
        for name in names:  # first turns through router A, which places them freely
            history = conversation(name)
            replica, route, answer = await ask(
                http, base_a, history, name if session_header else None
            )
            assert route.endswith("/placed")
            served[name] = replica
            text = answer["choices"][0]["message"]["content"]
            histories[name] = [*history, {"role": "assistant", "content": text}]
        assert len(set(served.values())) == 2  # free placement used both replicas
        index, prompts = second.app[FLEET].blocks, second.app[FLEET].prompts
        assert prompts is not None
        for name in names:  # router B never saw these conversations
            history = [*histories[name], {"role": "user", "content": "And then?"}]
            tokens = prompts.request_tokens(CHAT, {"messages": history})
            assert tokens is not None
            deadline = time.monotonic() + 5  # until the first turn's events reached B's index
            while not index.cached_tokens(tokens).get(served[name]):
                assert time.monotonic() < deadline, name
                await asyncio.sleep(0.02)
            replica, route, answer = await ask(
                http, base_b, history, name if session_header else None
            )
            assert replica == served[name], name
            assert route.endswith("/found"), route
            assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
