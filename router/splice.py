"""A pooled response's body written to the client from the replica's data callback.

Once the first chunk has reached the client (and the time to first token is recorded), the rest
of a stream needs nothing from the handler: each chunk the replica's parser yields is framed and
written to the client's transport on the spot. The handler task sleeps until the stream ends,
breaks, or the client stops reading, instead of waking once per chunk (a future, a task step, an
async iterator, aiohttp's writer coroutine). With chunks spaced as a model's tokens are, that is a
fifth of the router's CPU per request at concurrency 32 (README, Router overhead).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import ClientConnectionResetError

from router.upstream import UpstreamBody


class Watch(Protocol):
    def tick(self) -> None: ...


class ClientWriter(Protocol):
    """The client's side of the exchange (router/exchange.py), as far as the splice needs it."""

    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def writing_paused(self) -> bool: ...
    @property
    def chunked(self) -> bool: ...  # HTTP/1.1 with no length: chunked framing
    async def drain(self) -> None: ...  # waits while the client's transport is full


class Splice:
    """The sink an `UpstreamBody` feeds: `run()` returns once the body is whole, leaving
    `last_bytes` for the handler to write with the response's end."""

    __slots__ = ("body", "chunked", "client", "ended", "error", "last", "last_bytes", "must_drain",
                 "waiter", "watch")  # fmt: skip

    def __init__(self, body: UpstreamBody, client: ClientWriter, watch: Watch) -> None:
        self.body = body
        self.client = client
        self.chunked = client.chunked
        self.watch = watch
        self.last = b""  # the latest chunk: whether the stream broke between SSE events
        self.ended = False
        self.last_bytes = b""  # what came with the end: for the handler's write_eof
        self.error: BaseException | None = None
        self.must_drain = False
        self.waiter: asyncio.Future[None] | None = None

    # --- fed by the replica's connection, in its data callback
    def chunk(self, data: bytes) -> None:
        if self.error is not None:
            return
        transport = self.client.transport
        if transport is None or transport.is_closing():  # the client left: stop the replica
            self.fail(ClientConnectionResetError("Cannot write to closing transport"))
            return
        self.watch.tick()
        self.last = data
        if self.chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        if self.client.writing_paused and not self.must_drain:
            # The client reads slower than the replica writes: hold the replica back.
            self.must_drain = True
            self.body.pause_source()
            self._wake()

    def end(self, last: bytes) -> None:
        self.last_bytes = last  # written with the end of the response: one write, not two
        self.ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the handler's side
    async def run(self) -> None:
        """Until the body is whole; raises what broke it (the replica, the client, the idle
        timer). Drains the client's transport whenever the client falls behind."""
        self.body.splice(self)
        loop = asyncio.get_running_loop()
        while True:
            if self.error is not None:
                raise self.error
            if self.ended:
                return
            if self.must_drain:
                await self.client.drain()  # raises if the client is gone
                self.must_drain = False
                self.body.resume_source()
                continue
            self.waiter = loop.create_future()
            await self.waiter
            self.waiter = None
