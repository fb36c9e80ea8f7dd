"""vLLM's stored Responses behind the router: every request that continues or reads one reaches
the replica holding it (fake upstreams that store responses in their own memory, as vLLM does)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from router.app import FLEET
from router.core.response_owners import MAX_RESPONSE_ID_CHARS, ResponseOwners, stored_response_id
from router.stored_responses import body_id, first_event_id
from tests.conftest import Replica, RouterClient, Upstreams

CHAINS = 8
TURNS = 4


def stored_events(event: str) -> float:
    return REGISTRY.get_sample_value("router_stored_responses_total", {"event": event}) or 0.0


# --- the table (pure)


def test_the_table_remembers_refreshes_and_forgets_after_its_ttl() -> None:
    owners = ResponseOwners(max_entries=10, ttl=60.0)
    owners.put("resp_a", "http://r1", now=0.0)
    assert owners.get("resp_a", now=59.0) == "http://r1"  # and its use refreshes it
    assert owners.get("resp_a", now=118.0) == "http://r1"
    assert owners.get("resp_a", now=178.1) is None
    assert len(owners) == 0


def test_the_table_is_bounded_least_recently_used_first() -> None:
    owners = ResponseOwners(max_entries=2, ttl=60.0)
    owners.put("a", "r1", 0.0)
    owners.put("b", "r2", 1.0)
    owners.get("a", 2.0)
    owners.put("c", "r3", 3.0)
    assert (owners.get("a", 4.0), owners.get("b", 4.0), owners.get("c", 4.0)) == ("r1", None, "r3")
    assert ResponseOwners(max_entries=0).get("x", 0.0) is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [("resp_0123", True), ("", False), (7, False), (None, False), (["resp_1"], False),
     ("a\nb", False), ("x" * (MAX_RESPONSE_ID_CHARS + 1), False), ("r" * 256, True)],
)  # fmt: skip
def test_only_plausible_ids_are_looked_up(value: Any, valid: bool) -> None:
    assert (stored_response_id(value) is not None) is valid


def test_the_id_is_read_from_a_streams_first_event_or_a_json_body() -> None:
    created = {"response": {"id": "resp_1", "object": "response"}, "type": "response.created"}
    stream = f"event: response.created\ndata: {json.dumps(created)}\n\nevent: x\ndata: {{}}\n\n"
    assert first_event_id(stream.encode()) == "resp_1"
    assert body_id(json.dumps({"id": "resp_2", "object": "response"}).encode()) == "resp_2"
    assert body_id(b'{"id": "chatcmpl-1", "object": "chat.completion"}') is None
    assert first_event_id(b"data: [DONE]\n\n") is None
    assert body_id(b"not json") is None


# --- through the router


async def create(
    client: Any,
    previous: str | None,
    stream: bool,
    headers: dict[str, str] | None = None,
    text: str = "go on",
) -> tuple[str, str, str]:
    """One Responses turn; returns (response id, replica, x-router-route)."""
    body: dict[str, Any] = {"model": "fake-model", "input": text, "stream": stream}
    if previous is not None:
        body["previous_response_id"] = previous
    response = await client.post("/v1/responses", json=body, headers=headers or {})
    text = await response.text()
    assert response.status == 200, text
    if stream:
        assert text.rstrip().endswith("}")  # relayed whole: the last event too
        completed = text.split("event: response.completed\ndata: ")[1]
        response_id = json.loads(completed)["response"]["id"]
    else:
        response_id = json.loads(text)["id"]
    return response_id, response.headers["x-router-replica"], response.headers["x-router-route"]


async def run_chains(client: Any, stream: bool) -> list[list[tuple[str, str, str]]]:
    """CHAINS concurrent chains of TURNS turns, no session header: each turn continues the last."""

    async def chain(n: int) -> list[tuple[str, str, str]]:
        turns = [await create(client, None, stream, text=f"Task {n}: begin.")]
        for _ in range(TURNS - 1):
            turns.append(await create(client, turns[-1][0], stream))
        return turns

    return list(await asyncio.gather(*(chain(n) for n in range(CHAINS))))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_chains_without_a_session_id_reach_the_replica_holding_their_last_response(
    upstreams: Upstreams, router: RouterClient, stream: bool
) -> None:
    ups = await upstreams(3)
    client = await router([url for _, url in ups])
    learned, located = stored_events("learned"), stored_events("located")
    chains = await run_chains(client, stream)
    for turns in chains:
        for (_, before, _), (_, replica, route) in itertools.pairwise(turns):
            assert replica == before
            assert route == "none/stored_response"
    assert stored_events("learned") - learned == CHAINS * TURNS
    assert stored_events("located") == located  # this router relayed them all: nothing to ask
    assert len({turns[0][1] for turns in chains}) > 1  # the chains spread


async def test_reads_deletes_and_cancels_go_to_the_replica_holding_the_response(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(3)
    client = await router([url for _, url in ups])
    ids = [await create(client, None, stream=False) for _ in range(6)]
    for response_id, replica, _ in ids:
        for method, suffix in [("GET", ""), ("GET", "/input_items"), ("POST", "/cancel")]:
            response = await client.request(method, f"/v1/responses/{response_id}{suffix}")
            assert response.status == 200, await response.text()
            assert response.headers["x-router-replica"] == replica
            assert response.headers["x-router-route"] == "none/stored_response"
        response = await client.delete(f"/v1/responses/{response_id}")
        assert (response.status, response.headers["x-router-replica"]) == (200, replica)
        gone = await client.get(f"/v1/responses/{response_id}")
        assert gone.status == 404  # the replica that held it says so


async def test_another_router_instance_locates_each_response_once(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(3)
    urls = [url for _, url in ups]
    first, second = await router(urls), await router(urls)
    chains = await run_chains(first, stream=True)
    last = {turns[-1][0]: turns[-1][1] for turns in chains}
    located = stored_events("located")
    for _ in range(2):  # the second round is answered from what the first one located
        for response_id, replica in last.items():
            response = await second.get(f"/v1/responses/{response_id}")
            assert response.status == 200
            assert response.headers["x-router-replica"] == replica
    assert stored_events("located") - located == len(last)
    # ... and a chain can go on through the other instance.
    response_id, replica = next(iter(last.items()))
    _, went_to, route = await create(second, response_id, stream=True)
    assert (went_to, route) == (replica, "none/stored_response")


async def test_concurrent_requests_for_an_unknown_id_ask_the_replicas_once(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(3)
    urls = [url for _, url in ups]
    first, second = await router(urls), await router(urls)
    response_id, replica, _ = await create(first, None, stream=False)
    located = stored_events("located")
    asked_before = sum(len(fake.seen.requests) for fake, _ in ups)
    answers = await asyncio.gather(*(second.get(f"/v1/responses/{response_id}") for _ in range(10)))
    assert {a.status for a in answers} == {200}
    assert {a.headers["x-router-replica"] for a in answers} == {replica}
    assert stored_events("located") - located == 10  # each request found it ...
    asked = sum(len(fake.seen.requests) for fake, _ in ups) - asked_before
    assert asked <= 10 + len(ups)  # ... with one look-up: one GET per replica, then the 10


async def test_an_id_no_replica_holds_gets_vllms_own_404(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(3)
    client = await router([url for _, url in ups])
    lost = stored_events("lost")
    for response in (
        await client.get("/v1/responses/resp_nobody"),
        await client.post(
            "/v1/responses", json={"input": "x", "previous_response_id": "resp_nobody"}
        ),
    ):
        assert response.status == 404
        error = (await response.json())["error"]
        assert error["message"] == "Response with id 'resp_nobody' not found."
        assert error["param"] == "response_id"
    assert stored_events("lost") - lost == 2


async def test_the_replica_holding_a_response_being_out_gives_a_503_not_a_wrong_404(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    response_id, replica, _ = await create(client, None, stream=False)
    client.app[FLEET].replicas.eject(replica, now=time.monotonic(), reason="test")
    response = await client.get(f"/v1/responses/{response_id}")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["type"] == "service_unavailable"


async def test_a_silent_replica_leaves_the_choice_to_the_policy(
    upstreams: Upstreams, router: RouterClient, replica: Replica
) -> None:
    ups = await upstreams(1)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    urls = [ups[0][1], await replica(web.get("/v1/responses/{id}", hang))]
    writer = await router(urls[:1])
    reader = await router(urls, responses_locate_timeout=0.3, first_byte_timeout=0.5)
    response_id, _, _ = await create(writer, None, stream=False)
    # The holder answers the look-up at once; the silent replica is not waited for.
    started = time.monotonic()
    response = await reader.get(f"/v1/responses/{response_id}")
    assert response.status == 200
    assert time.monotonic() - started < 0.3
    # An id nobody holds, with one replica silent: "lost" cannot be said, so the policy's choice
    # answers for itself (the other replica's 404, or a timeout from the silent one).
    lost = stored_events("lost")
    response = await reader.get("/v1/responses/resp_unknown")
    assert response.status in (404, 504)
    assert stored_events("lost") == lost


async def test_a_turn_routed_by_its_stored_response_moves_its_conversation_there(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(4)
    client = await router([url for _, url in ups])
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    home = await client.post("/v1/chat/completions", json=chat, headers={"X-Session-Id": "s"})
    home_replica = home.headers["x-router-replica"]
    # A stored response on another replica, made by another conversation.
    for n in range(20):
        response_id, holder, _ = await create(client, None, False, {"X-Session-Id": f"o{n}"})
        if holder != home_replica:
            break
    else:
        pytest.skip("every conversation landed on one replica")
    _, replica, route = await create(client, response_id, False, {"X-Session-Id": "s"})
    assert (replica, route) == (holder, "header/stored_response")
    later = await client.post("/v1/chat/completions", json=chat, headers={"X-Session-Id": "s"})
    assert later.headers["x-router-replica"] == holder  # its cache is where that response is
    assert later.headers["x-router-route"] == "header/home"


async def test_look_ups_carry_what_authorizes_the_router_with_vllm(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    urls = [url for _, url in ups]
    # No router keys: the client's own Authorization is vLLM's business, and goes with a look-up.
    open_router = await router(urls)
    await open_router.get("/v1/responses/resp_x", headers={"Authorization": "Bearer client"})
    # Router keys: the client's key stays at the router; the static header authorizes.
    keyed = await router(urls, api_key=["router-key"], upstream_header=["Authorization=Bearer v"])
    await keyed.get("/v1/responses/resp_y", headers={"Authorization": "Bearer router-key"})
    looked_up = {
        seen["path"]: seen["headers"].get("Authorization")
        for fake, _ in ups
        for seen in fake.seen.requests
    }
    assert looked_up == {
        "/v1/responses/resp_x": "Bearer client",
        "/v1/responses/resp_y": "Bearer v",
    }
