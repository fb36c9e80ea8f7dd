"""A pooled response's body written to the client from the replica's data callback.

Once the response's head is out, the body needs nothing from the handler: each chunk the
replica's parser yields, the first included, is framed and written to the client's transport on
the spot, and the first one's time to first token is recorded there. The handler task sleeps until
the stream ends, breaks, or the client stops reading, instead of waking once per chunk (a future,
a task step, an async iterator, a writer coroutine). With chunks spaced as a model's tokens are,
that was a fifth of the router's CPU per request at concurrency 32; writing the first chunk from
the callback too spares it a task step on its way to the client (README, Router overhead).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aiohttp import ClientConnectionResetError

from router.upstream import UpstreamBody

log = logging.getLogger("router.splice")


class Watch(Protocol):
    def tick(self) -> None: ...


class ClientWriter(Protocol):
    """The client's side of the exchange (router/exchange.py), as far as the splice needs it."""

    @property
    def writing_paused(self) -> bool: ...
    def send(self, data: bytes) -> None: ...  # framed and written now; raises once it is gone
    def client_gone(self) -> bool: ...
    async def drain(self) -> None: ...  # waits while the client's transport is full


class Splice:
    """The sink an `UpstreamBody` feeds: `run()` returns once the body is whole, leaving
    `last_bytes` for the handler to write with the response's end. `on_first`, if set, is
    called once the first bytes are written (the time to first token)."""

    __slots__ = ("body", "client", "ended", "error", "last", "last_bytes", "must_drain",
                 "on_first", "waiter", "watch")  # fmt: skip

    def __init__(self, body: UpstreamBody, client: ClientWriter, watch: Watch) -> None:
        self.body = body
        self.client = client
        self.watch = watch
        self.on_first: Callable[[], None] | None = None
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
        client = self.client
        if client.client_gone():  # the client left: stop the replica
            self.fail(ClientConnectionResetError("Cannot write to closing transport"))
            return
        self.watch.tick()
        self.last = data
        client.send(data)
        if self.on_first is not None:
            on_first, self.on_first = self.on_first, None
            try:
                on_first()
            except Exception:  # bookkeeping must not break the stream, nor the replica's reads
                log.exception("recording the first chunk failed")
        if client.writing_paused and not self.must_drain:
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
