from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from bench.checks.fake_upstream import FakeUpstream
from router.app import FLEET
from router.config import ReplicaSpec
from tests.conftest import RouterClient, Upstreams, chat, dead_url


async def test_streaming_is_relayed_before_the_upstream_finishes(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, chunks=5, chunk_delay=0.3)
    client = await router([url])
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=chat("s"))
    assert response.status == 200
    first = await response.content.readline()
    first_at = time.monotonic() - started
    assert first.startswith(b"data: ")
    assert fake.seen.completed == 0  # the upstream is still streaming
    assert first_at < 1.0
    rest = await response.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert fake.seen.completed == 1


async def test_all_turns_of_a_session_land_on_one_replica(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(4)
    client = await router([u for _, u in ups])
    for session in range(20):
        replicas = set()
        for turn in range(1, 6):
            response = await client.post(
                "/v1/chat/completions",
                json=chat(f"conv-{session}", turn),
                headers={"X-Session-Id": f"conv-{session}"},
            )
            await response.read()
            expected = "header/placed" if turn == 1 else "header/home"
            assert response.headers["x-router-route"] == expected
            replicas.add(response.headers["x-router-replica"])
        assert len(replicas) == 1
    # and the upstream was told which conversation this is
    headers = [r["headers"] for fake, _ in ups for r in fake.seen.requests]
    assert all(h["X-Session-Id"].startswith("conv-") for h in headers)


async def test_a_session_without_headers_sticks_through_the_prefix_fallback(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(4)
    client = await router([u for _, u in ups])
    homes: Counter[str] = Counter()
    for session in range(12):
        replicas = set()
        for turn in range(1, 6):
            response = await client.post("/v1/chat/completions", json=chat(f"anon-{session}", turn))
            await response.read()
            expected = "prefix/placed" if turn == 1 else "prefix/home"
            assert response.headers["x-router-route"] == expected
            replicas.add(response.headers["x-router-replica"])
        assert len(replicas) == 1
        homes[replicas.pop()] += 1
    assert len(homes) > 1  # different conversations do not collapse onto one replica


async def test_a_replica_that_refuses_connections_is_skipped(
    aiohttp_server: Callable[..., Awaitable[TestServer]], router: RouterClient
) -> None:
    servers = [await aiohttp_server(FakeUpstream(f"up{i}").app()) for i in range(3)]
    urls = [str(s.make_url("")).rstrip("/") for s in servers]
    client = await router(urls, eject_after=100, health_interval=60)
    await servers[0].close()  # healthy at start-up, now refuses connections
    routes: Counter[str] = Counter()
    for session in range(30):
        response = await client.post(
            "/v1/chat/completions", json=chat("x"), headers={"X-Session-Id": f"s{session}"}
        )
        assert response.status == 200
        await response.read()
        assert response.headers["x-router-replica"] != urls[0]
        routes[response.headers["x-router-route"]] += 1
    assert routes["header/failover"] > 0  # some sessions had the dead replica as home


async def test_a_replica_down_at_start_up_takes_no_traffic(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1)
    dead = dead_url()
    client = await router([dead, url])
    status = await (await client.get("/router/replicas")).json()
    assert {r["url"]: r["healthy"] for r in status["replicas"]} == {dead: False, url: True}


async def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_event(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1, chunks=10, chunk_delay=0.05, die_after_chunks=3)
    client = await router([url])
    response = await client.post("/v1/chat/completions", json=chat("s"))
    assert response.status == 200
    body = await asyncio.wait_for(response.read(), timeout=5)
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 4
    assert events[-1].startswith(b"event: error\ndata: ")
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert error["error"]["type"] == "upstream_error"


async def test_a_503_fails_over_to_the_next_replica(
    upstreams: Upstreams, router: RouterClient
) -> None:
    sick, healthy = await upstreams(2)
    sick[0].behaviour.status = 503
    client = await router([sick[1], healthy[1]], eject_after=100)
    for session in range(20):
        response = await client.post(
            "/v1/chat/completions", json=chat("x"), headers={"X-Session-Id": f"s{session}"}
        )
        assert response.status == 200
        assert response.headers["x-router-replica"] == healthy[1]
        await response.read()
    assert sick[0].seen.requests  # it was tried, and the request went on


async def test_client_disconnect_cancels_the_upstream_request(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, chunks=50, chunk_delay=0.1)
    client = await router([url])
    response = await client.post("/v1/chat/completions", json=chat("s"))
    await response.content.readline()
    response.close()  # the client goes away mid-stream
    await asyncio.wait_for(fake.cancel_event.wait(), timeout=3)
    assert fake.seen.cancelled == 1
    assert fake.seen.completed == 0


async def test_an_oversized_body_gets_413(upstreams: Upstreams, router: RouterClient) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url], max_body_bytes=1000)
    response = await client.post("/v1/chat/completions", data=b"{" + b" " * 5000 + b"}")
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "body_too_large"
    assert not fake.seen.requests


async def test_invalid_json_gets_400(upstreams: Upstreams, router: RouterClient) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url])
    response = await client.post(
        "/v1/chat/completions", data=b'{"messages": [', headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "message" in error
    assert not fake.seen.requests


async def test_no_healthy_replica_gets_503_with_retry_after(router: RouterClient) -> None:
    client = await router([dead_url(), dead_url()], eject_after=1)
    response = await client.post("/v1/chat/completions", json=chat("s"))
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert (await response.json())["error"]["message"] == "no healthy replica"
    ready = await client.get("/ready")
    assert ready.status == 503


async def test_unknown_route_gets_404_json(upstreams: Upstreams, router: RouterClient) -> None:
    ((_, url),) = await upstreams(1)
    client = await router([url])
    response = await client.get("/nope")
    assert response.status == 404
    assert "error" in await response.json()


async def test_models_and_embeddings_are_forwarded(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1)
    client = await router([url])
    models = await client.get("/v1/models")
    assert (await models.json())["data"][0]["id"] == "fake-model"
    embeddings = await client.post("/v1/embeddings", json={"input": "hi", "model": "fake-model"})
    assert embeddings.status == 200


async def test_hop_by_hop_headers_are_dropped_and_static_headers_added(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url], upstream_header=["X-Team=search"])
    response = await client.post(
        "/v1/chat/completions",
        json=chat("s", stream=False),
        headers={"Authorization": "Bearer k", "Proxy-Authorization": "secret", "X-Custom": "1"},
    )
    assert response.status == 200
    seen = fake.seen.requests[-1]["headers"]
    assert seen["Authorization"] == "Bearer k"
    assert seen["X-Custom"] == "1"
    assert seen["X-Team"] == "search"
    assert "Proxy-Authorization" not in seen


async def test_route_headers_can_be_switched_off(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1)
    client = await router([url], route_headers=False)
    response = await client.post("/v1/chat/completions", json=chat("s", stream=False))
    assert "x-router-replica" not in response.headers


async def test_scraped_hit_ratio_matches_the_upstream_counters(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, hits_per_request=60, queries_per_request=100)
    client = await router([url], scrape_interval=0.2)
    await asyncio.sleep(0.3)  # a first scrape, the baseline
    for _ in range(5):
        response = await client.post("/v1/chat/completions", json=chat("s", stream=False))
        await response.read()
    await asyncio.sleep(0.5)
    status = await (await client.get("/router/replicas")).json()
    row = status["replicas"][0]
    assert row["prefix_cache_hit_ratio"] == 0.6
    assert row["prefix_cache_hits_total"] == fake.hits
    assert row["prefix_cache_queries_total"] == fake.queries
    ratio = REGISTRY.get_sample_value("router_replica_prefix_cache_hit_ratio", {"replica": url})
    assert ratio == 0.6


async def test_metrics_page_exposes_every_router_metric(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1)
    client = await router([url], scrape_interval=0.2)
    response = await client.post("/v1/chat/completions", json=chat("s"))
    await response.read()
    await asyncio.sleep(0.5)
    page = await (await client.get("/metrics")).text()
    for name in (
        "router_requests_total",
        "router_route_decisions_total",
        "router_inflight_requests",
        "router_replica_healthy",
        "router_ttft_seconds_bucket",
        "router_request_duration_seconds_bucket",
        "router_overhead_seconds_bucket",
        "router_upstream_errors_total",
        "router_replica_prefix_cache_hit_ratio",
        "router_replica_prefix_cache_hits_total",
        "router_replica_prefix_cache_queries_total",
        "router_replica_requests_running",
        "router_replica_requests_waiting",
        "router_replica_kv_cache_usage",
    ):
        assert f"\n{name}" in page or f"# TYPE {name}" in page, name
    assert "vllm:" not in page


async def test_a_body_session_id_with_control_characters_is_forwarded_not_a_500(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url])
    body = {**chat("s", stream=False), "metadata": {"session_id": "\x1f"}}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    assert fake.seen.requests[0]["headers"]["X-Session-Id"].startswith("h-")


async def test_a_replica_leaving_and_rejoining_mid_stream_keeps_its_inflight_count_at_zero(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1, chunks=4, chunk_delay=0.1)
    client = await router([url])
    fleet = client.app[FLEET]
    response = await client.post("/v1/chat/completions", json=chat("s"))
    await response.content.readline()
    fleet.replicas.set_members([])  # DNS drops the replica while the stream goes on ...
    fleet.replicas.set_members([ReplicaSpec(url)])  # ... and brings it back
    await response.read()
    await asyncio.sleep(0.05)
    assert fleet.loads.inflight(url) == 0
    assert fleet.loads.table.get(url) == 0


async def test_a_departed_replica_leaves_no_series_behind(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url), (_, other)) = await upstreams(2)
    client = await router([url, other])
    for i in range(6):
        response = await client.post(
            "/v1/chat/completions", json=chat("s"), headers={"X-Session-Id": f"s{i}"}
        )
        await response.read()
    page = await (await client.get("/metrics")).text()
    assert f'replica="{url}"' in page
    client.app[FLEET].replicas.set_members([ReplicaSpec(other)])
    page = await (await client.get("/metrics")).text()
    assert f'replica="{url}"' not in page
    assert f'replica="{other}"' in page


async def test_a_client_that_leaves_before_the_first_byte_is_counted(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, first_byte_delay=5.0)
    client = await router([url])
    before = (
        REGISTRY.get_sample_value(
            "router_requests_total", {"replica": url, "key_kind": "header", "status": "499"}
        )
        or 0
    )
    task = asyncio.ensure_future(
        client.post("/v1/chat/completions", json=chat("s"), headers={"X-Session-Id": "gone"})
    )
    for _ in range(100):
        if fake.seen.requests:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    for _ in range(100):
        after = (
            REGISTRY.get_sample_value(
                "router_requests_total", {"replica": url, "key_kind": "header", "status": "499"}
            )
            or 0
        )
        if after > before:
            break
        await asyncio.sleep(0.02)
    assert after == before + 1
