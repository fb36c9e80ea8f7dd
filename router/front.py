"""The router's own HTTP/1.1 front for the hot request shape; aiohttp's server for the rest.

Every client connection starts here. A JSON POST to an inference route, framed by Content-Length,
is read and answered on the raw transport, parsed by httptools: no request or response objects,
the body in hand before the handler starts, the response's head written with its first chunk.
That was about half of what the router added to the first token at concurrency 1 (README, Router
overhead). Any other request (GET, uploads, stored-Response paths, chunked or expected bodies,
HTTP/1.0, heads past the limits, bytes the parser rejects) hands the connection over, from that
request's first byte, to aiohttp's server, which serves it from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools
from aiohttp import ClientConnectionResetError, web
from multidict import CIMultiDict

from router.config import Config
from router.exchange import Reply, error_reply
from router.proxy import JSON_ROUTES, ProxyHandler
from router.upstream import encode_header

log = logging.getLogger("router.front")

HOT_PATHS = frozenset(path.encode() for path in JSON_ROUTES)
PIPELINE_HIGH_WATER = 1 << 20  # bytes read ahead while a request is served, before pausing
NO_BODY_STATUSES = frozenset({204, 304})
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# Request headers that take a request off the hot path: aiohttp's server knows what to do.
HANDED_OVER_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding"})


class HttpDate:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.header = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.header = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.header


class FrontServer:
    """Makes a FrontConnection per client connection, with aiohttp's server (`fallback`) for the
    connections handed over; drains both on shutdown. Stands where aiohttp's `web.Server` would
    (router/app.py, RouterRunner)."""

    def __init__(self, fallback: web.Server, proxy: ProxyHandler, config: Config) -> None:
        self.fallback = fallback
        self.proxy = proxy
        self.idle_timeout = config.client_idle_timeout
        self.max_head = config.max_header_bytes
        self.max_headers = config.max_headers
        self.max_body = config.max_body_bytes
        self.connections: set[FrontConnection] = set()
        self.closing = False
        self.date = HttpDate()

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def pre_shutdown(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their answer."""
        self.closing = True
        self.fallback.pre_shutdown()
        for connection in list(self.connections):
            if connection.task is None:
                connection.close()

    async def shutdown(self, timeout: float | None) -> None:
        await asyncio.gather(self.fallback.shutdown(timeout), self._drain(timeout))

    async def _drain(self, timeout: float | None) -> None:
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for connection in list(self.connections):  # past the drain time: cut what is left
            if connection.task is not None:
                connection.task.cancel()
            connection.close()


class FrontConnection(asyncio.Protocol):
    """One client connection: one request at a time, read whole before its handler starts."""

    def __init__(self, front: FrontServer) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buffer = bytearray()  # from the first byte of the request not yet answered
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_length = 0  # of the request in hand, once its head is parsed
        self.body_length = 0
        self.keep_alive = True
        self.task: asyncio.Task[None] | None = None
        self.idle_since = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.front.connections.add(self)
        self.timer = self.loop.call_at(self.idle_since + self.front.idle_timeout, self.check_idle)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self.next_request()
        elif len(self.buffer) > PIPELINE_HIGH_WATER and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.front.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:  # the client left: its upstream request must stop too
            self.task.cancel()
        self.wake_drain()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.wake_drain()

    # --- httptools callbacks (the head only: the body is sliced off the buffer)
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    # --- requests
    def next_request(self) -> None:
        """Start the request at the head of the buffer once it is whole; hand the connection
        over if it is not one for the front."""
        if self.transport is None or self.task is not None:
            return
        buffer = self.buffer
        if not self.head_length:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.front.max_head:
                    self.hand_over()
                return
            if end + 4 > self.front.max_head or not self.parse_head(bytes(buffer[: end + 4])):
                self.hand_over()
                return
            self.head_length = end + 4
        whole = self.head_length + self.body_length
        if len(buffer) < whole:
            return  # the body is on its way; the idle timer answers 408 if it stalls
        body = bytes(buffer[self.head_length : whole])
        del buffer[:whole]
        if body:
            self.parser.feed_data(body)  # ends the message: the parser is ready for the next
        self.start(body)

    def parse_head(self, head: bytes) -> bool:
        """Whether the head is a hot request the front serves; its facts are kept if so."""
        self.url = b""
        self.raw_headers = []
        parser = self.parser
        try:
            parser.feed_data(head)
        except httptools.HttpParserError:
            return False
        if (
            parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or self.url.partition(b"?")[0] not in HOT_PATHS
            or len(self.raw_headers) > self.front.max_headers
        ):
            return False
        length = None
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length":
                if length is not None:
                    return False
                length = int(value)  # digits only: the parser checked
            elif lowered in HANDED_OVER_HEADERS:
                return False
        if length is None or length > self.front.max_body:
            return False
        self.body_length = length
        self.keep_alive = parser.should_keep_alive()
        return True

    def start(self, body: bytes) -> None:
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self.raw_headers
        )
        url = self.url
        exchange = FrontExchange(
            self,
            url.partition(b"?")[0].decode(),
            url.decode("utf-8", "surrogateescape"),
            headers,
            body,
        )
        self.head_length = 0
        self.task = self.loop.create_task(self.serve(exchange))

    async def serve(self, exchange: FrontExchange) -> None:
        try:
            await self.front.proxy.handle(exchange)
        except Exception:
            log.exception("error handling %s", exchange.path)
        finally:
            self.task = None
        if self.transport is None:
            return
        if not exchange.done:  # an answer never made, or broken off
            if not exchange.started:
                exchange.reply(error_reply(500, "internal router error", "internal_error"))
            self.close()
            return
        if not self.keep_alive or self.front.closing:
            self.close()
            return
        self.idle_since = self.loop.time()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buffer:
            self.next_request()

    def hand_over(self) -> None:
        """aiohttp's server takes the connection from the request at the buffer's head on."""
        transport = self.transport
        assert transport is not None and self.task is None
        self.transport = None
        self.front.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        handler = self.front.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        buffer, self.buffer = bytes(self.buffer), bytearray()
        if buffer:
            handler.data_received(buffer)

    def check_idle(self) -> None:
        """Cut off a client idle past --client-idle-timeout, or too slow to send its request."""
        if self.transport is None:
            return
        now = self.loop.time()
        due = (now if self.task is not None else self.idle_since) + self.front.idle_timeout
        if now < due:
            self.timer = self.loop.call_at(due, self.check_idle)
            return
        if self.head_length:  # the head came, the body did not
            reply = error_reply(408, "request body too slow", "invalid_request_error", "timeout")
            self.front.proxy.record(None, "none", reply.status, time.perf_counter())
            self.transport.write(self.whole_response(reply, close=True))
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def wake_drain(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def whole_response(self, reply: Reply, close: bool = False) -> bytes:
        lines = [b"HTTP/1.1 %d %b\r\n" % (reply.status, REASONS.get(reply.status, b""))]
        lines.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(reply.body))
        for name, value in reply.headers.items():
            lines.append(b"%b: %b\r\n" % (encode_header(name), encode_header(value)))
        if close or not self.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(self.front.date())
        lines.append(b"\r\n")
        lines.append(reply.body)
        return b"".join(lines)


class FrontExchange:
    """A request the front read whole, and the answer written straight to its transport."""

    __slots__ = ("body", "body_in_hand", "chunked", "connection", "content_length",
                 "content_type", "done", "head", "headers", "method", "path", "started",
                 "stream", "target")  # fmt: skip

    def __init__(
        self,
        connection: FrontConnection,
        path: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> None:
        self.connection = connection
        self.method = "POST"
        self.path = path
        self.target = target
        self.headers = headers
        self.body = body
        self.content_length: int | None = len(body)
        content_type = headers.get("Content-Type")
        self.content_type = (
            content_type.partition(";")[0].strip().lower()
            if content_type
            else "application/octet-stream"
        )
        self.body_in_hand = True
        self.stream = None
        self.head = b""  # the response's head, until it goes out with the first bytes
        self.chunked = False
        self.started = False
        self.done = False

    async def read(self) -> bytes:
        return self.body

    def reply(self, reply: Reply) -> None:
        self.started = self.done = True
        transport = self.connection.transport
        if transport is not None and not transport.is_closing():
            transport.write(self.connection.whole_response(reply))

    async def start(
        self,
        status: int,
        reason: str | None,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        held: bool = False,
    ) -> None:
        self.started = True
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, encode_header(reason or ""))]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if length is not None:
            lines.append(b"Content-Length: %d\r\n" % length)
        elif status not in NO_BODY_STATUSES:
            self.chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not self.connection.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(self.connection.front.date())
        lines.append(b"\r\n")
        self.head = b"".join(lines)
        if not held:
            self._send(b"")

    def _send(self, data: bytes) -> None:
        transport = self.connection.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        if self.head:
            data, self.head = self.head + data, b""
        transport.write(data)

    def send(self, data: bytes) -> None:
        if data:
            self._send(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    async def write(self, data: bytes) -> None:
        self.send(data)
        if self.connection.writing_paused:
            await self.drain()

    async def end(self, last: bytes = b"") -> None:
        if self.chunked:
            last = (b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last)) if last else b"0\r\n\r\n"
        self._send(last)
        self.done = True

    def cut(self) -> None:
        self.connection.keep_alive = False
        self.connection.close()

    def client_gone(self) -> bool:
        transport = self.connection.transport
        return transport is None or transport.is_closing()

    @property
    def writing_paused(self) -> bool:
        return self.connection.writing_paused

    async def drain(self) -> None:
        connection = self.connection
        if connection.transport is None:
            raise ClientConnectionResetError("Cannot write to closing transport")
        if connection.writing_paused:
            waiter = connection.drain_waiter = connection.loop.create_future()
            await waiter
            if connection.transport is None:
                raise ClientConnectionResetError("Connection lost")
