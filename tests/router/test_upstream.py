"""The raw upstream leg (router/upstream.py) against scripted HTTP servers on 127.0.0.1.

Each server answers its n-th request (on whichever connection) with the n-th script of its list;
a script gets the request's head and body and the connection's writer, and writes what it likes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme
from prometheus_client import REGISTRY

from router.upstream import (
    READ_HIGH_WATER,
    BrokenBody,
    ConnectFailed,
    StaleConnection,
    UpstreamPool,
)
from tests.conftest import RouterClient, chat, dead_url

Script = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Scripted:
    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed = asyncio.Event()  # a connection reached EOF from the router's side

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /health "):  # the router's health checks
                    writer.write(OK)
                    continue
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.heads.append(head)
                self.bodies.append(body)
                await self.scripts.pop(0)(head, body, writer)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the router closed its end
        self.closed.set()
        writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[tuple[Scripted, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(
        scripts: list[Script], tls: ssl.SSLContext | None = None
    ) -> tuple[Scripted, str]:
        server = Scripted(scripts)
        listening = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
        servers.append(listening)
        port = listening.sockets[0].getsockname()[1]
        return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for listening in servers:
        listening.close()


def answer(data: bytes, close: bool = False) -> Script:
    async def script(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return script


async def silent(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    pass  # never answers


async def drop(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.close()  # read the request, answer nothing


def pool(limit: int = 0) -> UpstreamPool:
    return UpstreamPool(connect_timeout=1.0, keepalive_timeout=4.0, limit=limit)


async def read_all(response: object) -> bytes:
    return b"".join([chunk async for chunk in response.content.iter_any()])  # type: ignore[attr-defined]


async def test_keep_alive_reuses_one_connection_and_sends_the_body_framed(scripted) -> None:
    server, url = await scripted([answer(OK), answer(OK)])
    upstream = pool()
    for n in range(2):
        response = await upstream.request(url, "POST", "/v1/x?a=1", {"X-Test": f"{n}"}, b"[1]")
        assert (response.status, response.content_type) == (200, "application/json")
        assert await read_all(response) == b"{}"
        response.release()
    assert server.connections == 1
    assert server.bodies == [b"[1]", b"[1]"]
    port = url.rsplit(":", 1)[1]
    assert server.heads[0].startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in server.heads[0]
    assert b"X-Test: 0\r\nContent-Length: 3\r\n" in server.heads[0]
    await upstream.close()


async def test_releasing_a_finished_response_leaves_the_next_exchange_alone(scripted) -> None:
    # The connection goes back to the pool the moment the first body is whole, so the next
    # request may be on it, mid-body, before the first relay lets go of its response.
    gate = asyncio.Event()

    async def in_two_parts(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await gate.wait()
        writer.write(b"cd")

    server, url = await scripted([answer(OK), in_two_parts])
    upstream = pool()
    first = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    assert await read_all(first) == b"{}"
    second = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    first.release()
    first.close()
    gate.set()
    assert await read_all(second) == b"abcd"
    assert server.connections == 1
    await upstream.close()


async def test_a_replica_url_with_a_path_prefixes_every_request(scripted) -> None:
    server, url = await scripted([answer(OK)])
    upstream = pool()
    response = await upstream.request(url + "/engine-a/", "GET", "/v1/models", {}, b"")
    await read_all(response)
    assert server.heads[0].startswith(b"GET /engine-a/v1/models HTTP/1.1\r\n")
    assert b"Content-Length" not in server.heads[0]  # a GET without a body declares none
    await upstream.close()


async def test_a_pooled_connection_the_replica_dropped_is_stale_and_a_fresh_one_answers(
    scripted,
) -> None:
    server, url = await scripted([answer(OK), drop, answer(OK)])
    upstream = pool()
    await read_all(await upstream.request(url, "POST", "/v1/x", {}, b"{}"))
    with pytest.raises(StaleConnection):
        await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}", fresh=True)
    assert await read_all(response) == b"{}"
    assert server.connections == 2
    await upstream.close()


async def test_the_router_retries_a_stale_connection_on_the_same_replica(
    scripted, router: RouterClient
) -> None:
    sse = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    )
    server, url = await scripted([answer(sse), drop, answer(sse)])
    client = await router([url])
    before = REGISTRY.get_sample_value(
        "router_upstream_errors_total", {"replica": url, "kind": "stale_connection"}
    )
    for _ in range(2):
        response = await client.post("/v1/chat/completions", json=chat("s"))
        assert response.status == 200
        assert await response.read() == b"data: [DONE]\n\n"
    after = REGISTRY.get_sample_value(
        "router_upstream_errors_total", {"replica": url, "kind": "stale_connection"}
    )
    assert (after or 0) - (before or 0) == 1
    assert len(server.bodies) == 3  # the second turn sent twice: once stale, once fresh


async def test_a_body_that_runs_to_the_close_ends_whole(scripted) -> None:
    unframed = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, part two"
    _, url = await scripted([answer(unframed, close=True)])
    upstream = pool()
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    assert response.content_length is None
    assert await read_all(response) == b"part one, part two"
    assert not upstream.open and not upstream.idle  # nothing kept for a replica left unconnected
    await upstream.close()


async def test_a_body_cut_short_raises_and_malformed_http_fails_the_head(scripted) -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    _, url = await scripted([answer(short, close=True)])
    upstream = pool()
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    with pytest.raises(BrokenBody):
        await read_all(response)
    _, garbled = await scripted([answer(b"HTTP/1.1 abc nonsense\r\n\r\n")])
    with pytest.raises(BrokenBody):
        await upstream.request(garbled, "POST", "/v1/x", {}, b"{}")
    with pytest.raises(ConnectFailed):
        await upstream.request(dead_url(), "POST", "/v1/x", {}, b"{}")
    await upstream.close()


async def test_an_interim_100_continue_is_skipped(scripted) -> None:
    _, url = await scripted([answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)])
    upstream = pool()
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    assert response.status == 200
    assert await read_all(response) == b"{}"
    await upstream.close()


async def test_connections_per_replica_are_capped_and_waiters_reuse_a_released_one(
    scripted,
) -> None:
    server, url = await scripted([answer(OK), answer(OK), answer(OK)])
    upstream = pool(limit=1)
    responses = await asyncio.gather(
        *(upstream.request(url, "POST", "/v1/x", {}, b"{}") for _ in range(3))
    )
    assert [await read_all(r) for r in responses] == [b"{}"] * 3
    assert server.connections == 1
    await upstream.close()


async def test_cancelling_the_wait_for_the_head_closes_the_connection(scripted) -> None:
    server, url = await scripted([silent])
    upstream = pool()
    waiting = asyncio.ensure_future(upstream.request(url, "POST", "/v1/x", {}, b"{}"))
    while not server.bodies:
        await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(server.closed.wait(), 5)  # the replica sees the request abandoned
    assert not upstream.idle.get(upstream.origin(url))
    await upstream.close()


async def test_an_unread_body_pauses_the_replica_until_it_is_read(scripted) -> None:
    size = 4 * READ_HIGH_WATER
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    _, url = await scripted([answer(big)])
    upstream = pool()
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    connection = response._connection
    for _ in range(500):  # the replica writes as fast as it can; nobody reads
        if connection.paused:
            break
        await asyncio.sleep(0.01)
    assert connection.paused
    assert connection.body._size <= 2 * READ_HIGH_WATER
    assert len(await read_all(response)) == size
    await upstream.close()


async def test_the_clients_own_session_header_travels_once(scripted, router: RouterClient) -> None:
    server, url = await scripted([answer(OK)])
    client = await router([url])
    response = await client.post(
        "/v1/chat/completions",
        json=chat("s", stream=False),
        headers={"x-session-id": "mine", "x-api-note": "kept"},
    )
    assert response.status == 200
    head = server.heads[0].lower()
    assert head.count(b"x-session-id:") == 1
    assert b"x-session-id: mine\r\n" in head
    assert b"x-api-note: kept\r\n" in head


async def test_a_replicas_response_headers_reach_the_client_as_sent(
    scripted, router: RouterClient
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Note: caf\xc3\xa9\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    _, url = await scripted([answer(head)])
    client = await router([url])
    response = await client.post("/v1/chat/completions", json=chat("s", stream=False))
    assert response.headers["X-Note"] == "café"
    assert await response.read() == b"{}"


class Collected:
    """A body sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.last = b""
        self.ended = asyncio.Event()
        self.error: BaseException | None = None

    def chunk(self, data: bytes) -> None:
        self.pieces.append(data)

    def end(self, last: bytes) -> None:
        self.last = last
        self.ended.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ended.set()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in parts)


async def test_a_spliced_body_gets_what_was_buffered_then_one_piece_per_read(scripted) -> None:
    steps = [asyncio.Event(), asyncio.Event()]

    async def in_three_reads(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"a", b"b"))
        await steps[0].wait()
        writer.write(chunked(b"c", b"d"))  # two chunks, one read
        await steps[1].wait()
        writer.write(chunked(b"e") + b"0\r\n\r\n")  # the last chunk and the end, one read

    server, url = await scripted([in_three_reads, answer(OK)])
    upstream = pool()
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    await asyncio.sleep(0.1)  # "a" and "b" are buffered before the sink is there
    sink = Collected()
    response.content.splice(sink)
    assert sink.pieces == [b"ab"]
    steps[0].set()
    for _ in range(100):
        if len(sink.pieces) == 2:
            break
        await asyncio.sleep(0.01)
    assert sink.pieces == [b"ab", b"cd"]
    steps[1].set()
    await asyncio.wait_for(sink.ended.wait(), 5)
    # what came with the end is left for the end's own write
    assert (sink.pieces, sink.last, sink.error) == ([b"ab", b"cd"], b"e", None)
    response.release()  # whole: the connection goes back to the pool and serves the next
    await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    assert server.connections == 1
    await upstream.close()


async def test_a_spliced_body_cut_short_fails_the_sink(scripted) -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"a")
    _, url = await scripted([answer(cut, close=True)])
    upstream = pool()
    response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
    sink = Collected()
    response.content.splice(sink)
    await asyncio.wait_for(sink.ended.wait(), 5)
    assert isinstance(sink.error, BrokenBody)
    await upstream.close()


async def test_a_head_sent_before_a_long_prefill_reaches_the_client_at_once(
    scripted, router: RouterClient
) -> None:
    first_token = asyncio.Event()

    async def slow_prefill(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await first_token.wait()
        writer.write(chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    _, url = await scripted([slow_prefill])
    client = await router([url])
    # The head alone: the client has it while the replica is still prefilling.
    response = await asyncio.wait_for(client.post("/v1/chat/completions", json=chat("s")), 3)
    assert response.headers["Content-Type"] == "text/event-stream"
    first_token.set()
    assert await asyncio.wait_for(response.read(), 3) == b"data: [DONE]\n\n"


async def test_an_https_replica_is_verified_and_kept_alive(scripted, tmp_path, monkeypatch) -> None:
    authority = trustme.CA()
    served = authority.issue_cert("127.0.0.1")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.configure_cert(tls)
    server, url = await scripted([answer(OK), answer(OK)], tls=tls)
    trusting = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(trusting))
    monkeypatch.setenv("SSL_CERT_FILE", str(trusting))  # the system's trust, as a test sets it
    upstream = pool()
    for _ in range(2):
        response = await upstream.request(url, "POST", "/v1/x", {}, b"{}")
        assert (response.status, await read_all(response)) == (200, b"{}")
        response.release()
    assert server.connections == 1  # kept alive over TLS too
    port = url.rsplit(":", 1)[1]
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in server.heads[0]
    await upstream.close()

    monkeypatch.delenv("SSL_CERT_FILE")  # a replica whose certificate nobody vouches for
    untrusting = pool()
    with pytest.raises(ConnectFailed):
        await untrusting.request(url, "POST", "/v1/x", {}, b"{}")
    await untrusting.close()
