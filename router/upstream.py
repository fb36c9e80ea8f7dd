"""Keep-alive HTTP/1.1 to the replicas on raw asyncio protocols, parsed by httptools.

The hot path's upstream leg: a request whose body is already in hand (every JSON route) is written
in one go on a pooled connection, and the response's body chunks are handed to the relay as the
parser yields them. aiohttp's client costs about as much CPU per streamed request as the rest of
the router together (README, Router overhead); this does what the relay needs and no more.
Uploads and HEAD requests, rare and shaped differently, still go through aiohttp's client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from dataclasses import dataclass
from typing import Protocol, cast

import httptools
from yarl import URL

READ_HIGH_WATER = 1 << 20  # unread body bytes held before the replica's socket is paused
MAX_ORIGINS = 4096  # parsed replica URLs remembered


class UpstreamError(Exception):
    """The replica could not be reached or broke the exchange."""


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable, connect timeout)."""


class StaleConnection(UpstreamError):
    """A pooled connection closed before any byte of the response: the replica had dropped it."""


class BrokenBody(UpstreamError):
    """The connection ended or the bytes made no sense before the response's body was whole."""


def encode_header(text: str) -> bytes:
    try:  # the bytes the client sent (aiohttp decodes headers with surrogateescape)
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON body's id
        return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one replica's requests go: parsed once per replica URL."""

    host: str
    port: int
    tls: bool
    base_path: bytes  # a URL's own path ahead of the request's (`http://host/prefix`)
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Origin:
        parsed = URL(url)
        host = parsed.host or "localhost"
        return cls(
            host,
            parsed.port or 80,
            parsed.scheme == "https",
            parsed.raw_path.rstrip("/").encode(),
            # As aiohttp writes it: IDNA, IPv6 in brackets, the port only when not the default.
            (parsed.host_port_subcomponent or host).encode("ascii"),
        )


class BodySink(Protocol):
    """Takes a body's bytes as they are parsed (router/splice.py)."""

    def chunk(self, data: bytes) -> None: ...
    def end(self, last: bytes) -> None: ...  # `last`: what came with the end, not yet handed
    def fail(self, error: BaseException) -> None: ...


class UpstreamBody:
    """A response's body as it arrives: `readany()` waits for whatever came since the last read,
    or, once `splice`d, a sink gets what each read of the replica's socket brought, in one piece.

    Flow control is the connection's: reading pauses past READ_HIGH_WATER unread bytes, so a slow
    client holds the replica's stream back instead of the router's memory.
    """

    __slots__ = ("_buffer", "_connection", "_eof", "_error", "_sink", "_size", "_waiter")

    def __init__(self, connection: UpstreamConnection) -> None:
        self._connection = connection
        self._buffer: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: BodySink | None = None

    def feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._sink is None:
            self._wake()
            if self._size > READ_HIGH_WATER:
                self._connection.pause()

    def flush(self) -> None:
        """The parser is done with what one read brought: a sink gets it in one piece."""
        if self._sink is not None and self._buffer:
            self._sink.chunk(self._take())

    def _take(self) -> bytes:
        buffer = self._buffer
        if not buffer:
            return b""
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        return data

    def feed_eof(self) -> None:
        self._eof = True
        sink, self._sink = self._sink, None  # an idle pooled connection keeps no client alive
        if sink is not None:
            sink.end(self._take())  # the last bytes and the end: one write to the client
        else:
            self._wake()

    @property
    def buffered(self) -> bool:
        """Bytes (or the end) are in hand: a read now would not wait."""
        return bool(self._buffer) or self._eof

    @property
    def ended(self) -> bool:
        """The whole body arrived: the exchange is over, whatever the connection does next."""
        return self._eof

    def set_exception(self, error: BaseException) -> None:
        """The pending or next read raises `error` (a broken stream, a silent replica)."""
        self._error = error
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.fail(error)
        self._wake(error)

    def splice(self, sink: BodySink) -> None:
        """From now on the sink gets every read's bytes as they are parsed; what is buffered
        goes first."""
        self._connection.resume()
        if self._error is not None:
            sink.fail(self._error)
        elif self._eof:
            sink.end(self._take())
        else:
            self._sink = sink
            if self._buffer:
                sink.chunk(self._take())

    def pause_source(self) -> None:
        """The sink's reader is full: stop reading from the replica."""
        self._connection.pause()

    def resume_source(self) -> None:
        self._connection.resume()

    def _wake(self, error: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def readany(self) -> bytes:
        """The bytes received since the last read; b"" once the body is whole."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._error is not None:
            raise self._error
        if len(self._buffer) == 1:
            data = self._buffer.popleft()
        else:
            data = b"".join(self._buffer)
            self._buffer.clear()
        self._size = 0
        self._connection.resume()
        return data

    def iter_any(self) -> UpstreamBody:
        return self

    def __aiter__(self) -> UpstreamBody:
        return self

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data


class UpstreamResponse:
    """What the relay reads of a replica's response: the head, then `content` as it arrives.
    Its headers stay the bytes the replica sent; the relay passes them on as they are."""

    __slots__ = ("_connection", "content", "content_length", "content_type", "raw_headers",
                 "reason", "status")  # fmt: skip

    def __init__(
        self,
        connection: UpstreamConnection,
        status: int,
        reason: str,
        raw_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._connection = connection
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        self.content_length: int | None = None
        self.content_type = ""
        for name, value in raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.isdigit():
                self.content_length = int(value)
            elif lowered == b"content-type":
                self.content_type = value.partition(b";")[0].strip().lower().decode("latin-1")
        self.content = connection.body

    def release(self) -> None:
        """Done with it: a whole body left the connection pooled (perhaps already serving the
        next request); a partial one closes it."""
        if not self.content.ended:
            self._connection.abort()

    def close(self) -> None:
        """Stop here: the replica sees the connection close and aborts the request (a whole
        body has nothing left to stop)."""
        self.release()


class UpstreamConnection(asyncio.Protocol):
    """One connection to a replica; one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0
        self.reused = False  # has served an exchange before: it may be stale
        self.head: asyncio.Future[UpstreamResponse] | None = None
        self.body = UpstreamBody(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self.complete = True  # no exchange under way
        self.received = False  # any byte of the current exchange's response
        self.keep_alive = False
        self.paused = False

    # --- the exchange, driven by the pool's caller
    def send(self, data: list[bytes]) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self.complete = False
        self.received = False
        self.body = UpstreamBody(self)
        self._reason = b""
        self._headers = []
        self.head = self.loop.create_future()
        self.transport.writelines(data)
        return self.head

    def time_out(self) -> None:
        """No head by the deadline: the pending wait raises TimeoutError."""
        head = self.head
        if head is not None and not head.done():
            head.set_exception(asyncio.TimeoutError("replica did not answer in time"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.pool.forget(self)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.fail(BrokenBody(f"replica sent malformed HTTP: {error}"))
            self.abort()
        self.body.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self.complete:
            return
        head = self.head
        if head is not None and not head.done():
            if self.reused and not self.received:
                self.fail(StaleConnection("replica closed a pooled connection"))
            else:
                self.fail(BrokenBody("replica closed the connection before answering"))
        elif self.unframed():  # a body that runs to the connection's close has ended
            self.complete = True
            self.body.feed_eof()
        else:
            self.fail(BrokenBody("replica closed the connection mid-body"))

    def fail(self, error: UpstreamError) -> None:
        self.complete = True
        head = self.head
        if head is not None and not head.done():
            head.set_exception(error)
        else:
            self.body.set_exception(error)

    def unframed(self) -> bool:
        names = {name.lower() for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # --- httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            self._reason, self._headers = b"", []
            return
        if self.head is None or self.head.done():  # an answer to nothing asked: not HTTP
            self.abort()
            return
        self.keep_alive = self.parser.should_keep_alive()
        reason = self._reason.decode("utf-8", "surrogateescape")
        self.head.set_result(UpstreamResponse(self, status, reason, self._headers))

    def on_body(self, body: bytes) -> None:
        self.body.feed(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        self.complete = True
        self.body.feed_eof()
        if self.keep_alive and self.transport is not None:
            self.reused = True
            self.pool.put_back(self)
        else:
            self.abort()


class UpstreamPool:
    """Idle keep-alive connections per replica, newest first, at most `limit` open per replica."""

    def __init__(self, *, connect_timeout: float, keepalive_timeout: float, limit: int) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.limit = limit  # 0: no limit
        self.idle: dict[Origin, list[UpstreamConnection]] = {}
        self.open: dict[Origin, set[UpstreamConnection]] = {}
        self.waiting: dict[Origin, collections.deque[asyncio.Future[None]]] = {}
        self.origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None

    def tls(self) -> ssl.SSLContext:
        """One verifying context for every https replica: making one reads the CA bundle."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def origin(self, url: str) -> Origin:
        origin = self.origins.get(url)
        if origin is None:
            if len(self.origins) >= MAX_ORIGINS:  # replicas come and go (DNS): stay bounded
                self.origins.clear()
            origin = self.origins[url] = Origin.parse(url)
        return origin

    async def request(
        self,
        url: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        *,
        fresh: bool = False,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait for the response's head, for at most `timeout` seconds
        (TimeoutError past them). `fresh`: a new connection, for the retry after a stale one."""
        origin = self.origin(url)
        lines = [f"{method} ".encode(), origin.base_path, encode_header(target)]
        lines.append(b" HTTP/1.1\r\nHost: %b\r\n" % origin.host_header)
        for name, value in headers.items():
            lines.append(b"%b: %b\r\n" % (encode_header(name), encode_header(value)))
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        data = [b"".join(lines), body] if body else [b"".join(lines)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        connection = None if fresh else self.take_idle(origin)
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self.connect(origin)
        head = connection.send(data)
        # One timer, not asyncio.timeout's context: this is every request's path.
        timer = loop.call_at(deadline, connection.time_out) if deadline is not None else None
        try:
            return await head
        except BaseException:  # cancelled, timed out or failed: the replica must let it go
            connection.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def take_idle(self, origin: Origin) -> UpstreamConnection | None:
        idle = self.idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self.keepalive_timeout and connection.transport:
                return connection
            connection.abort()  # idle past the replica's own keep-alive: it may be closing it
        return None

    async def connect(self, origin: Origin) -> UpstreamConnection:
        while True:
            opened = self.open.setdefault(origin, set())
            if not self.limit or len(opened) < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            waiting = self.waiting.setdefault(origin, collections.deque())
            waiting.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    waiting.remove(waiter)
            connection = self.take_idle(origin)
            if connection is not None:
                return connection
        loop = asyncio.get_running_loop()
        connection = UpstreamConnection(self, origin)
        opened.add(connection)
        try:
            opening = loop.create_connection(
                lambda: connection, origin.host, origin.port, ssl=self.tls() if origin.tls else None
            )
            await asyncio.wait_for(opening, self.connect_timeout)  # once per new connection
        except (OSError, asyncio.TimeoutError) as error:
            self.forget(connection)
            raise ConnectFailed(f"cannot connect to replica: {error!r}") from error
        except BaseException:
            self.forget(connection)
            raise
        return connection

    def put_back(self, connection: UpstreamConnection) -> None:
        connection.idle_since = asyncio.get_running_loop().time()
        self.idle.setdefault(connection.origin, []).append(connection)
        self.wake(connection.origin)

    def forget(self, connection: UpstreamConnection) -> None:
        """A connection closed: no longer open nor idle; someone waiting may open another."""
        origin = connection.origin
        opened = self.open.get(origin)
        if opened is not None and connection in opened:
            opened.discard(connection)
            idle = self.idle.get(origin)
            if idle and connection in idle:
                idle.remove(connection)
            self.wake(origin)
            if not opened and not self.waiting.get(origin):  # a replica gone leaves nothing
                del self.open[origin]
                self.idle.pop(origin, None)
                self.waiting.pop(origin, None)

    def wake(self, origin: Origin) -> None:
        waiting = self.waiting.get(origin)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for opened in list(self.open.values()):
            for connection in list(opened):
                connection.abort()
        self.idle.clear()
        self.open.clear()
