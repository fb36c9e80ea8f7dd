"""Authentication, limits and outlier ejection (issue 7's router features)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import aiohttp

from router.cli import load_config
from tests.conftest import RouterClient, RouterProcess, Upstreams, chat, free_port


async def test_api_keys_guard_the_v1_surface(upstreams: Upstreams, router: RouterClient) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url], api_key=["key-one", "key-two"])
    missing = await client.post("/v1/chat/completions", json=chat("s"))
    assert missing.status == 401
    assert (await missing.json())["error"]["code"] == "invalid_api_key"
    wrong = await client.post(
        "/v1/chat/completions", json=chat("s"), headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status == 401
    assert not fake.seen.requests
    for key in ("key-one", "key-two"):
        ok = await client.post(
            "/v1/chat/completions",
            json=chat("s", stream=False),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert ok.status == 200
    # the router's key is not passed on to the replica
    assert "Authorization" not in fake.seen.requests[-1]["headers"]
    assert (await client.get("/health")).status == 200  # probes stay open


def test_api_keys_from_the_environment() -> None:
    config = load_config(["--replica", "http://a:1"], {"ROUTER_API_KEYS": "k1,k2"})
    assert config.api_key == ["k1", "k2"]


async def test_admin_port_takes_metrics_and_replica_status_off_the_public_port(
    upstreams: Upstreams, router_process: Callable[[list[str]], RouterProcess]
) -> None:
    ((_, url),) = await upstreams(1)
    port = free_port()
    router = router_process(["--replica", url, "--admin-port", str(port)])
    await router.wait_ready()
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/router/replicas"):
            async with session.get(router.url + path) as public:
                assert public.status == 404
            async with session.get(f"http://127.0.0.1:{port}{path}") as admin:
                assert admin.status == 200
        async with session.get(f"http://127.0.0.1:{port}/metrics") as admin:
            assert "router_requests_total" in await admin.text()


async def test_beyond_max_inflight_clients_get_429_with_retry_after(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((_, url),) = await upstreams(1, chunks=20, chunk_delay=0.1)
    client = await router([url], max_inflight=2)
    held = [await client.post("/v1/chat/completions", json=chat(f"s{i}")) for i in range(2)]
    refused = await client.post("/v1/chat/completions", json=chat("s3"))
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["type"] == "rate_limit_error"
    for response in held:
        assert (await response.read()).rstrip().endswith(b"[DONE]")
    again = await client.post("/v1/chat/completions", json=chat("s4"))
    assert again.status == 200
    await again.read()


async def test_header_limits_and_slow_clients_are_cut_off(
    upstreams: Upstreams, router_process: Callable[[list[str]], RouterProcess]
) -> None:
    ((_, url),) = await upstreams(1)
    router = router_process(
        [
            "--replica",
            url,
            "--max-headers",
            "20",
            "--max-header-bytes",
            "2048",
            "--client-idle-timeout",
            "1",
        ]
    )
    await router.wait_ready()
    async with aiohttp.ClientSession() as session:
        many = {f"x-h{i}": "v" for i in range(50)}
        async with session.post(
            router.url + "/v1/chat/completions", json=chat("s"), headers=many
        ) as r:
            assert 400 <= r.status < 500
        async with session.post(
            router.url + "/v1/chat/completions", json=chat("s"), headers={"x-big": "v" * 4096}
        ) as r:
            assert 400 <= r.status < 500
    loop = asyncio.get_running_loop()

    def slow_loris() -> float:
        """Trickle a request's headers in, never finishing; seconds until the router hangs up."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.settimeout(0.2)
            try:
                for byte in (
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
                ):
                    sock.sendall(bytes([byte]))
                    try:
                        if sock.recv(1024) == b"":
                            break  # closed by the router
                    except TimeoutError:
                        pass
            except OSError:
                pass  # reset by the router
        return time.monotonic() - started

    held = await loop.run_in_executor(None, slow_loris)
    assert held < 6
    async with aiohttp.ClientSession() as session:  # and everyone else is still served
        async with session.post(router.url + "/v1/chat/completions", json=chat("s")) as r:
            assert r.status == 200
            await r.read()


async def test_a_body_that_trickles_in_gets_408(
    upstreams: Upstreams, router_process: Callable[[list[str]], RouterProcess]
) -> None:
    ((fake, url),) = await upstreams(1)
    router = router_process(["--replica", url, "--client-idle-timeout", "1"])
    await router.wait_ready()
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert b" 408 " in status_line
    writer.close()
    assert not fake.seen.requests


async def test_a_slow_replica_is_ejected_and_takes_new_sessions_when_it_recovers(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(4)
    slow_fake, slow_url = ups[0]
    client = await router(
        [u for _, u in ups],
        outlier_ttft_factor=3.0,
        outlier_min_ttft=0.1,
        eject_backoff=1.0,
        health_interval=0.2,
    )

    async def placements(first: int = 0) -> dict[str, str]:
        placed = {}
        for i in range(first, first + 40):
            r = await client.post(
                "/v1/chat/completions", json=chat("x"), headers={"X-Session-Id": f"s{i}"}
            )
            await r.read()
            placed[f"s{i}"] = r.headers["x-router-replica"]
        return placed

    before = await placements()
    slow_fake.behaviour.first_byte_delay = 0.3  # starts answering slowly
    for _ in range(3):
        during = await placements()
        if slow_url not in during.values():
            break
    status = {
        r["url"]: r for r in (await (await client.get("/router/replicas")).json())["replicas"]
    }
    assert slow_url not in during.values()
    assert status[slow_url]["last_error"].startswith("slow")
    moved = {s for s in before if before[s] != during[s]}
    assert moved == {s for s, u in before.items() if u == slow_url}  # only the slow one's sessions
    slow_fake.behaviour.first_byte_delay = 0.0  # recovers
    await asyncio.sleep(1.5)
    assert await placements() == during  # moved sessions stay with their caches: no ping-pong
    assert slow_url in (await placements(first=100)).values()  # new ones reach it again
