"""The client's side of one request, as the proxy sees it, whichever server read it.

The hot request shape (a JSON POST to an inference route) is read and answered by the router's
own front protocol (router/front.py); everything else by aiohttp's server. The proxy reads the
request and writes the answer through `Exchange`, so one handler serves both.
"""

from __future__ import annotations

from typing import Protocol

import msgspec
from aiohttp import ClientConnectionResetError, StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from multidict import MultiMapping

ERROR_ENCODER = msgspec.json.Encoder()


class BodyTooLarge(Exception):
    """The body turned out longer than --max-body-bytes while it was read."""


class Reply:
    """A whole answer built by the router itself: an error object, or a replica's 404 relayed."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}  # beyond Content-Type (JSON) and Content-Length


def error_reply(status: int, message: str, kind: str, code: str | int | None = None) -> Reply:
    """An OpenAI-style error object."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code or status}}
    return Reply(status, ERROR_ENCODER.encode(body))


def aiohttp_response(reply: Reply) -> web.Response:
    return web.Response(
        status=reply.status, body=reply.body, headers=reply.headers, content_type="application/json"
    )


class Exchange(Protocol):
    """One request and its answer. A response is either one `reply`, or `start`, then `write`s,
    then `end` (or `cut`, which drops the connection: a truncated body, visibly)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def target(self) -> str: ...  # the path and query as the client sent them, for the replica
    @property
    def headers(self) -> MultiMapping[str]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content_type(self) -> str: ...  # lower-cased, parameters dropped
    @property
    def body_in_hand(self) -> bool: ...  # all of the body came with the head: nothing to wait
    @property
    def stream(self) -> StreamReader | None: ...  # an upload as it arrives (aiohttp's server)

    async def read(self) -> bytes: ...  # the whole body; raises BodyTooLarge
    def reply(self, reply: Reply) -> None: ...
    async def start(
        self,
        status: int,
        reason: str | None,
        headers: list[tuple[bytes, bytes]],  # as the replica sent them
        length: int | None,
        held: bool = False,  # the head may wait to go out with the first bytes of the body
    ) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self, last: bytes = b"") -> None: ...
    def cut(self) -> None: ...
    def client_gone(self) -> bool: ...

    # --- what a splice (router/splice.py) writes through once the response has started
    def send(self, data: bytes) -> None: ...  # framed and written now; raises once it is gone
    @property
    def writing_paused(self) -> bool: ...
    async def drain(self) -> None: ...


class AiohttpExchange:
    """A request aiohttp's server read: the answer is the `response` its handler returns."""

    __slots__ = ("body_in_hand", "content_length", "content_type", "headers", "method", "path",
                 "request", "response", "stream", "target", "writer")  # fmt: skip

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.method = request.method
        self.path = request.path
        self.target = request.rel_url.raw_path_qs
        self.headers = request.headers
        self.content_length = request.content_length
        self.content_type = request.content_type
        self.body_in_hand = request.content.is_eof()
        self.stream: StreamReader | None = request.content
        self.response: web.StreamResponse | None = None
        self.writer: AbstractStreamWriter | None = None

    async def read(self) -> bytes:
        try:
            return await self.request.read()
        except web.HTTPRequestEntityTooLarge as error:
            raise BodyTooLarge from error

    def reply(self, reply: Reply) -> None:
        self.response = aiohttp_response(reply)

    async def start(
        self,
        status: int,
        reason: str | None,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        held: bool = False,
    ) -> None:
        decoded = [  # as aiohttp's client decodes them: any byte is relayed as it came
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in headers
        ]
        response = self.response = web.StreamResponse(status=status, reason=reason, headers=decoded)
        if length is not None:
            response.content_length = length
        self.writer = await response.prepare(self.request)  # aiohttp sends the head at once

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def end(self, last: bytes = b"") -> None:
        assert self.response is not None
        await self.response.write_eof(last)

    def cut(self) -> None:
        if self.response is not None:
            self.response.force_close()
        if self.request.transport is not None:
            self.request.transport.close()

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def send(self, data: bytes) -> None:
        """Straight to the transport: aiohttp sent the head when the response was prepared."""
        if not data:
            return  # an empty chunk would end a chunked body
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        if getattr(self.writer, "chunked", False):  # aiohttp's StreamWriter says how it frames
            data = b"%x\r\n%b\r\n" % (len(data), data)
        transport.write(data)

    @property
    def writing_paused(self) -> bool:
        return self.request.protocol.writing_paused

    async def drain(self) -> None:
        assert self.writer is not None
        await self.writer.drain()
