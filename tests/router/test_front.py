"""The router's own front (router/front.py): the hot requests on raw protocols, the rest handed
to aiohttp's server on the same connection, whatever order they come in."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import RouterClient, Upstreams, chat, dead_url

CHAT = b"/v1/chat/completions"


def post(body: bytes, *headers: bytes, path: bytes = CHAT) -> bytes:
    head = [b"POST %b HTTP/1.1" % path, b"Host: x", b"Content-Type: application/json"]
    head += [*headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off a keep-alive connection: status, headers, decoded body."""
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while size := int((await reader.readline()).strip(), 16):
        body += await reader.readexactly(size)
        await reader.readline()
    await reader.readline()
    return status, headers, body


async def test_hot_and_other_requests_share_a_keep_alive_connection(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url])
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = json.dumps(chat("s")).encode()
    get_models = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    # Hot, then one for aiohttp's server (the connection is handed over), then hot again.
    for request in (post(body), get_models, post(body)):
        writer.write(request)
        status, headers, payload = await asyncio.wait_for(read_response(reader), 5)
        assert status == 200, payload
        assert headers["x-router-replica"] == url
    assert payload.endswith(b"data: [DONE]\n\n")
    writer.close()
    assert [r["path"] for r in fake.seen.requests] == ["/v1/chat/completions"] * 2


async def test_pipelined_requests_are_answered_in_order(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, chunks=3)
    client = await router([url])
    reader, writer = await asyncio.open_connection(client.host, client.port)
    bodies = [json.dumps(chat(f"s{i}")).encode() for i in range(3)]
    writer.write(b"".join(post(b, b"X-Session-Id: p%d" % i) for i, b in enumerate(bodies)))
    for _ in bodies:
        status, _, payload = await asyncio.wait_for(read_response(reader), 5)
        assert status == 200 and payload.endswith(b"data: [DONE]\n\n")
    writer.close()
    sessions = [r["headers"]["X-Session-Id"] for r in fake.seen.requests]
    assert sessions == ["p0", "p1", "p2"]


async def test_chunked_and_expecting_bodies_are_served_by_aiohttp(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url])
    body = json.dumps(chat("s")).encode()

    async def chunks() -> object:
        yield body[:10]
        yield body[10:]

    async with aiohttp.ClientSession() as session:
        target = f"http://{client.host}:{client.port}/v1/chat/completions"
        async with session.post(target, data=chunks()) as response:  # Transfer-Encoding
            assert response.status == 200
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
        async with session.post(target, data=body, expect100=True) as response:
            assert response.status == 200
            await response.read()
    assert [r["body"] for r in fake.seen.requests] == [chat("s"), chat("s")]


async def test_connection_close_is_honoured(upstreams: Upstreams, router: RouterClient) -> None:
    ((_, url),) = await upstreams(1, chunks=2)
    client = await router([url])
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(post(json.dumps(chat("s")).encode(), b"Connection: close"))
    status, headers, _ = await asyncio.wait_for(read_response(reader), 5)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the router hung up
    writer.close()


async def test_bad_requests_on_the_hot_path_get_json_errors_and_the_connection_lives_on(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1)
    client = await router([url], max_body_bytes=4096)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(post(b"{not json"))
    status, headers, payload = await asyncio.wait_for(read_response(reader), 5)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(payload)["error"]["code"] == "invalid_json"
    writer.write(post(b"x" * 5000))  # over --max-body-bytes: aiohttp's server says 413
    status, _, payload = await asyncio.wait_for(read_response(reader), 5)
    assert status == 413
    assert json.loads(payload)["error"]["code"] == "body_too_large"
    writer.close()
    assert not fake.seen.requests


async def test_bytes_that_are_not_http_get_aiohttps_400(router: RouterClient) -> None:
    client = await router([dead_url()])
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 400 " in status_line
    writer.close()


async def test_a_large_body_arriving_in_pieces_is_forwarded_whole(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ((fake, url),) = await upstreams(1, chunks=2)
    client = await router([url])
    body = chat("big")
    body["messages"][1]["content"] = "word " * 600_000  # 3 MB
    raw = json.dumps(body).encode()
    request = post(raw)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    for start in range(0, len(request), 1 << 16):  # as a slow uplink would deliver it
        writer.write(request[start : start + (1 << 16)])
        await writer.drain()
    status, _, payload = await asyncio.wait_for(read_response(reader), 10)
    assert status == 200 and payload.endswith(b"data: [DONE]\n\n")
    writer.close()
    assert fake.seen.requests[0]["body"] == body
