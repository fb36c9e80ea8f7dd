"""What Python can do without aiohttp: a streaming relay on raw asyncio protocols.

    python -m bench.checks.protocol_relay --port 8300 --upstream 127.0.0.1:8301

A measuring stick for `make bench-overhead`, not a server to deploy: uvloop's transports and
httptools' parser (llhttp, the parser Node.js and uvicorn use), one keep-alive connection pool
upstream, each request's body sent on as it was received and each upstream body chunk written to
the client the moment it is parsed. It serves the overhead check's request (a POST with a
Content-Length, answered with a chunked stream) and nothing else: no routing, no errors beyond
closing the connection, no timeouts, no backpressure. Next to the bare aiohttp relay
(`floor_proxy.py`) it shows how much of the router's CPU per request is aiohttp's machinery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

import httptools
import uvloop

READY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the replica; relays one response at a time to `client`."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, client: Client, request: bytes) -> None:
        assert self.transport is not None
        self.client = client
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        assert self.client is not None
        status = self.parser.get_status_code()
        self.client.write(
            b"HTTP/1.1 %d OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nx-router-replica: upstream\r\n\r\n" % status
        )

    def on_body(self, body: bytes) -> None:
        assert self.client is not None
        self.client.write(b"%x\r\n%b\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        assert self.client is not None
        self.client.write(b"0\r\n\r\n")
        self.client = None
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None:  # mid-response: the client sees the cut
            self.client.close()


class Client(asyncio.Protocol):
    """One client connection: parses requests, hands each to a pooled upstream connection."""

    def __init__(self, host: str, port: int, pool: list[Upstream]) -> None:
        self.host, self.port, self.pool = host, port, pool
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[None] | None = None  # held: the loop keeps weak refs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.url == b"/ready":
            self.write(READY)
            return
        body = b"".join(self.body)
        self.body = []
        request = (
            b"POST %b HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (self.url, len(body), body)
        )
        if self.pool:
            self.pool.pop().send(self, request)
        else:
            self.connecting = asyncio.ensure_future(self.connect_and_send(request))

    async def connect_and_send(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: Upstream(self.pool), self.host, self.port
            )
        except OSError:
            self.close()
            return
        upstream.send(self, request)


async def serve(port: int, upstream: str) -> None:
    host, _, upstream_port = upstream.rpartition(":")
    pool: list[Upstream] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(host, int(upstream_port), pool), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the check stops it
        uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
