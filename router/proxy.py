"""The OpenAI-compatible surface: parse once, choose, forward, relay, record.

Read `ProxyHandler.handle` top to bottom to see where a request goes. Responses are relayed chunk
by chunk as they arrive; nothing is buffered whole. Failover is "the next candidate"; a pooled
connection that dies before any byte came back is retried once on the same replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import msgspec
from multidict import MultiMapping

from router import metrics
from router.config import Config
from router.core.keys import (
    KeyExtractor,
    RoutingKey,
    conversation_length,
    opens_conversation,
    redact,
)
from router.core.loads import Loads, Ticket
from router.core.outliers import OutlierDetector
from router.core.policies import Outcome, Policy, Route, Turn
from router.core.response_owners import stored_response_id
from router.exchange import BodyTooLarge, Exchange, Reply, error_reply
from router.lookup import PromptLookup
from router.replicas import ReplicaSet
from router.splice import Splice
from router.stored_responses import RESPONSES_PATH, Found, StoredResponses
from router.upstream import (
    ConnectFailed,
    StaleConnection,
    UpstreamBody,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)

log = logging.getLogger("router.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    }
)  # fmt: skip
RAW_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
JSON_ROUTES = frozenset(
    {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
        "/v1/messages", "/v1/messages/count_tokens", "/tokenize", "/detokenize", "/pooling",
        "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank",
        "/inference/v1/generate",
    }
)  # fmt: skip
# vLLM's endpoints outside /v1/ (which is forwarded whole), served like /v1/*.
VLLM_ROUTES = (
    "/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/rerank", "/v2/rerank",
    "/inference/v1/generate",
)  # fmt: skip
# Multipart uploads: streamed through to one replica as they arrive, never held or parsed.
UPLOAD_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
RETRY_STATUSES = frozenset({502, 503})
JSON = msgspec.json.Decoder()  # the same values as json.loads, 2-6x faster on request bodies
SSE_ERROR_PREFIX = b"event: error\ndata: "
CLIENT_CLOSED = 499  # nginx's convention for "the client went away first"
Body = bytes | aiohttp.StreamReader  # read whole, or an upload streaming through
Upstream = UpstreamResponse | aiohttp.ClientResponse  # pooled raw protocol, or aiohttp's client


if sys.version_info >= (3, 11):
    deadline = asyncio.timeout  # a timer on this task; wait_for would add a task
else:  # pragma: no cover

    @contextlib.asynccontextmanager
    async def deadline(delay: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(delay, task.cancel)
        try:
            yield
        except asyncio.CancelledError as error:
            if handle.when() <= asyncio.get_running_loop().time():
                raise asyncio.TimeoutError from error
            raise
        finally:
            handle.cancel()


def with_headers(headers: dict[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`headers` with `extra` in place of any of the same name, whatever its case."""
    replaced = {name.lower() for name in extra}
    merged = {name: value for name, value in headers.items() if name.lower() not in replaced}
    merged.update(extra)
    return merged


def is_error_object(body: bytes) -> bool:
    """Whether `body` is a JSON error object, as vLLM answers (a proxy's plain 404 is not)."""
    try:
        return isinstance(JSON.decode(body), dict)
    except (ValueError, RecursionError):
        return False


class IdleWatch:
    """Ends an upstream stream that stays silent for `idle` seconds (--idle-timeout).

    One timer per request, re-armed at most once per idle period, and a clock read per chunk:
    aiohttp's own read timeout re-arms a timer on every chunk received.
    """

    __slots__ = ("_handle", "content", "idle", "last", "loop")

    def __init__(self, content: UpstreamBody | aiohttp.StreamReader, idle: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.content = content
        self.idle = idle
        self.last = self.loop.time()
        self._handle = self.loop.call_at(self.last + idle, self._check)

    def tick(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        silent = self.loop.time() - self.last
        if silent >= self.idle:  # the pending read wakes with the error: a broken stream
            self.content.set_exception(asyncio.TimeoutError("replica silent mid-stream"))
        else:
            self._handle = self.loop.call_at(self.last + self.idle, self._check)

    def stop(self) -> None:
        self._handle.cancel()


class UpstreamFailure(Exception):
    """The replica could not be used before any byte reached the client: try the next one."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


class ProxyHandler:
    def __init__(
        self,
        config: Config,
        *,
        extractor: KeyExtractor,
        policy: Policy,
        loads: Loads,
        replicas: ReplicaSet,
        outliers: OutlierDetector,
        responses: StoredResponses,
        pool: UpstreamPool,
        session: aiohttp.ClientSession,
        fresh_session: aiohttp.ClientSession,
        lookup: PromptLookup | None = None,
    ) -> None:
        self.config = config
        self.extractor = extractor
        self.policy = policy
        self.loads = loads
        self.replicas = replicas
        self.outliers = outliers
        self.responses = responses
        self.lookup = lookup  # engine truth, when the policy is in doubt
        self.pool = pool  # every request whose body is in hand
        self.session = session  # uploads and HEAD: aiohttp's client
        self.fresh_session = fresh_session  # no pooling: for retries after a stale connection
        self.static_headers = config.static_headers
        # Never forwarded: hop-by-hop headers, those the router sets itself, and the router's own
        # API key (not the replicas' business).
        own = {name.lower() for name in self.static_headers}
        if config.api_key:
            own.add("authorization")
        self.dropped_unkeyed = HOP_BY_HOP | own
        self.dropped_keyed = self.dropped_unkeyed | {"x-session-id"}
        self.bytes_per_token = config.bytes_per_token
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.api_keys = tuple(key.encode() for key in config.api_key)
        self.inflight = 0

    async def handle(
        self, exchange: Exchange, stored: str | None = None, upload: bool = False
    ) -> None:
        """Answer one request through `exchange`. `stored`: the response id of a
        `/v1/responses/{id}` path; `upload`: a multipart body to stream through."""
        received = time.perf_counter()
        refusal = self.admission(exchange)
        if refusal is not None:
            return self.finish(exchange, refusal, "none", None, received)
        self.inflight += 1
        try:
            await self.route_and_forward(exchange, received, stored, upload)
        finally:
            self.inflight -= 1

    def admission(self, exchange: Exchange) -> Reply | None:
        """Who may come in: a valid API key when keys are set, and room under --max-inflight."""
        if self.api_keys and not self.authorized(exchange.headers.get("Authorization", "")):
            return error_reply(
                401, "invalid or missing API key", "invalid_request_error", "invalid_api_key"
            )
        limit = self.config.max_inflight
        if limit and self.inflight >= limit:
            reply = error_reply(
                429, "router at its in-flight limit", "rate_limit_error", "too_many_requests"
            )
            reply.headers["Retry-After"] = "1"
            return reply
        return None

    def authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        offered = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key, always: the time taken says nothing about which key is close.
        matches = [hmac.compare_digest(offered, key) for key in self.api_keys]
        return any(matches)

    async def route_and_forward(
        self, exchange: Exchange, received: float, stored: str | None, upload: bool
    ) -> None:
        # --- parse once (an upload is not read here: it streams through as it arrives)
        body: Body
        if upload:
            body, parsed, problem = self.upload_body(exchange)
            size = exchange.content_length or 0
        else:
            data, parsed, problem = await self.read_body(exchange)
            body, size = data, len(data)
        if problem is not None:
            return self.finish(exchange, problem, "none", None, received)
        key = self.extractor.extract(exchange.headers, parsed)
        turn = Turn(
            key,
            size / self.bytes_per_token,
            opens_conversation(parsed),
            length=conversation_length(parsed),
        )
        # --- choose: the replica holding a stored Response first (correctness), else the policy
        previous = parsed.get("previous_response_id") if type(parsed) is dict else None
        if stored is None and previous is None:
            route = self.policy.route(turn, self.loads, time.monotonic(), self.config.max_attempts)
        else:
            chosen = await self.route_stored(exchange, stored, previous, turn)
            if isinstance(chosen, Reply):
                return self.finish(exchange, chosen, key.kind.value, None, received)
            route = chosen
        if route.lookup and self.lookup is not None:  # in doubt: ask engine truth, then again
            cached = await self.lookup.cached(exchange.path, parsed, turn.tokens)
            turn = replace(turn, cached=cached)
            route = self.policy.route(turn, self.loads, time.monotonic(), self.config.max_attempts)
        if upload:  # sent once: no failover once its bytes have left
            route = replace(route, candidates=route.candidates[:1])
        if not route.candidates:
            reply = error_reply(503, "no healthy replica", "service_unavailable")
            reply.headers["Retry-After"] = "1"
            return self.finish(exchange, reply, key.kind.value, None, received)
        # --- forward, relay, record
        await self.forward(exchange, body, turn, route, received)

    async def read_body(self, exchange: Exchange) -> tuple[bytes, Any, Reply | None]:
        length = exchange.content_length
        if length is not None and length > self.config.max_body_bytes:
            return b"", None, self.too_large()
        try:
            if exchange.body_in_hand:  # all of it arrived with the headers: nothing to wait
                body = await exchange.read()
            else:
                async with deadline(self.config.client_idle_timeout):
                    body = await exchange.read()
        except BodyTooLarge:
            return b"", None, self.too_large()
        except asyncio.TimeoutError:
            return (
                b"",
                None,
                error_reply(408, "request body too slow", "invalid_request_error", "timeout"),
            )
        if exchange.method != "POST" or not body or not self.is_json(exchange):
            return body, None, None
        try:
            return body, JSON.decode(body), None
        except (ValueError, RecursionError) as error:
            message = f"request body is not valid JSON: {str(error)[:200]}"
            return body, None, error_reply(400, message, "invalid_request_error", "invalid_json")

    def upload_body(self, exchange: Exchange) -> tuple[Body, None, Reply | None]:
        """A multipart body to stream through: its declared length is checked, nothing read."""
        if exchange.content_length is None:
            message = "an upload must declare its Content-Length"
            refusal = error_reply(411, message, "invalid_request_error", "length_required")
            return b"", None, refusal
        if exchange.content_length > self.config.max_body_bytes:
            return b"", None, self.too_large()
        assert exchange.stream is not None  # uploads are served by aiohttp's server
        return exchange.stream, None, None

    async def route_stored(
        self, exchange: Exchange, stored: str | None, previous: Any, turn: Turn
    ) -> Route | Reply:
        """To the replica holding the stored Response a path names (`stored`) or a turn continues
        (`previous`) (docs/design.md, "Stored Responses"). A turn that continues one feeds
        placement: its conversation's cache is there too."""
        now = time.monotonic()
        response_id = stored or stored_response_id(previous)
        if response_id is None:  # not an id worth looking up: the replica will say so
            return self.policy.route(turn, self.loads, now, self.config.max_attempts)
        owner = await self.responses.owner(response_id, self.replica_auth(exchange))
        if owner.found is Found.LOST:  # no healthy replica holds it: vLLM's own 404
            if is_error_object(owner.not_found):
                return Reply(404, owner.not_found)
            message = f"no replica holds response {response_id!r}"
            return error_reply(404, message, "invalid_request_error", "response_not_found")
        if owner.found is Found.UNAVAILABLE:
            reply = error_reply(
                503, "the replica holding this response is unavailable", "service_unavailable"
            )
            reply.headers["Retry-After"] = "1"
            return reply
        if owner.replica is None:  # cannot tell: the policy's choice answers for itself
            return self.policy.route(turn, self.loads, now, self.config.max_attempts)
        if stored is None:
            self.policy.moved(turn, owner.replica, now)
        return Route((owner.replica,), Outcome.STORED_RESPONSE, turn.tokens)

    def replica_auth(self, exchange: Exchange) -> dict[str, str]:
        """The client's Authorization when it passes through to vLLM (no router keys)."""
        auth = exchange.headers.get("Authorization")
        return {"Authorization": auth} if auth and not self.api_keys else {}

    def is_json(self, exchange: Exchange) -> bool:
        return exchange.path in JSON_ROUTES or exchange.content_type == "application/json"

    def too_large(self) -> Reply:
        limit = self.config.max_body_bytes
        return error_reply(
            413,
            f"request body larger than {limit} bytes",
            "invalid_request_error",
            "body_too_large",
        )

    async def forward(
        self,
        exchange: Exchange,
        body: Body,
        turn: Turn,
        route: Route,
        received: float,
    ) -> None:
        key = turn.key
        kind = key.kind.value
        metrics.decisions(kind, route.outcome.value).inc()
        headers = self.upstream_headers(exchange.headers, key)
        failure: UpstreamFailure | None = None
        for attempt, url in enumerate(route.candidates):
            if attempt:
                metrics.decisions(kind, Outcome.FAILOVER.value).inc()
            replica = self.replicas.get(url)
            # The first candidate was chosen knowing what it holds; a failover prefills it all.
            tokens = route.tokens if attempt == 0 else turn.tokens
            ticket = self.loads.start(url, tokens) if replica is not None else None
            if replica is None or ticket is None:
                continue
            try:
                if attempt == 0:
                    metrics.OVERHEAD.observe(time.perf_counter() - received)
                try:
                    upstream = await self.open(
                        exchange,
                        url,
                        body,
                        with_headers(headers, replica.headers) if replica.headers else headers,
                    )
                except asyncio.CancelledError:
                    self.record(url, kind, CLIENT_CLOSED, received)  # left before the first byte
                    raise
                last = attempt == len(route.candidates) - 1
                if upstream.status in RETRY_STATUSES and not last:
                    upstream.release()
                    raise UpstreamFailure("status", 502, f"replica answered {upstream.status}")
                outcome = route.outcome
                if attempt:
                    outcome = Outcome.FAILOVER
                    self.policy.moved(turn, url, time.monotonic())
                return await self.relay(exchange, upstream, ticket, kind, outcome, received)
            except UpstreamFailure as error:
                failure = error
                metrics.UPSTREAM_ERRORS.labels(url, error.kind).inc()
                self.replicas.record_failure(url, time.monotonic(), str(error))
            finally:
                self.loads.finish(ticket)
        assert failure is not None or not route.candidates
        status = failure.status if failure else 502
        message = f"no replica could serve the request: {failure}" if failure else "no replica"
        reply = error_reply(status, message, "upstream_error")
        return self.finish(exchange, reply, kind, None, received)

    def upstream_headers(self, incoming: MultiMapping[str], key: RoutingKey) -> dict[str, str]:
        # The router's own headers replace the client's, whatever their case: one of each travels.
        dropped: Collection[str] = self.dropped_unkeyed if key.is_none else self.dropped_keyed
        connection = incoming.get("Connection")
        if connection:  # headers it names are hop-by-hop too
            dropped = {*dropped, *(token.strip().lower() for token in connection.split(","))}
        headers = {name: value for name, value in incoming.items() if name.lower() not in dropped}
        if not key.is_none:
            headers["X-Session-Id"] = key.value
        headers.update(self.static_headers)
        return headers

    async def open(
        self, exchange: Exchange, url: str, body: Body, headers: dict[str, str]
    ) -> Upstream:
        """Send the request and wait for the response headers (the first byte)."""
        method = exchange.method
        if type(body) is bytes and method != "HEAD":
            return await self.open_pooled(method, exchange.target, url, body, headers)
        target = url + exchange.target
        try:
            return await self._send(self.session, method, target, body, headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
            if isinstance(error, aiohttp.ClientConnectorError):
                raise UpstreamFailure(
                    "connect", 502, f"cannot connect to replica: {error}"
                ) from error
            # A pooled keep-alive connection the replica had just closed: same replica, fresh
            # connection, so the conversation keeps its cache. An upload cannot be sent twice.
            metrics.UPSTREAM_ERRORS.labels(url, "stale_connection").inc()
            if not isinstance(body, bytes):
                raise UpstreamFailure(
                    "connect", 502, f"replica dropped the upload: {error}"
                ) from error
            try:
                return await self._send(self.fresh_session, method, target, body, headers)
            except aiohttp.ClientError as retry_error:
                raise UpstreamFailure(
                    "connect", 502, f"replica dropped the request: {retry_error}"
                ) from retry_error
        except asyncio.TimeoutError as error:
            raise UpstreamFailure("timeout", 504, "replica did not answer in time") from error
        except aiohttp.ClientError as error:
            raise UpstreamFailure("connect", 502, f"replica request failed: {error}") from error

    async def open_pooled(
        self, method: str, target: str, url: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        try:
            timeout = self.config.first_byte_timeout
            try:
                return await self.pool.request(url, method, target, headers, body, timeout=timeout)
            except StaleConnection:
                # The replica had just closed the pooled connection: same replica, fresh
                # connection, so the conversation keeps its cache.
                metrics.UPSTREAM_ERRORS.labels(url, "stale_connection").inc()
                return await self.pool.request(
                    url, method, target, headers, body, fresh=True, timeout=timeout
                )
        except ConnectFailed as error:
            raise UpstreamFailure("connect", 502, str(error)) from error
        except asyncio.TimeoutError as error:
            raise UpstreamFailure("timeout", 504, "replica did not answer in time") from error
        except UpstreamError as error:
            raise UpstreamFailure("connect", 502, f"replica request failed: {error}") from error

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: str,
        body: Body,
        headers: dict[str, str],
    ) -> aiohttp.ClientResponse:
        async with deadline(self.config.first_byte_timeout):
            # Redirects are the client's business: relayed, never followed.
            return await session.request(
                method, target, data=body or None, headers=headers, allow_redirects=False
            )

    async def relay(
        self,
        exchange: Exchange,
        upstream: Upstream,
        ticket: Ticket,
        kind: str,
        outcome: Outcome,
        received: float,
    ) -> None:
        """Copy the upstream response to the client chunk by chunk, as the chunks arrive."""
        url = ticket.account.url
        headers = [item for item in upstream.raw_headers if item[0].lower() not in RAW_HOP_BY_HOP]
        if self.config.route_headers:
            headers.append((b"x-router-replica", url.encode()))
            headers.append((b"x-router-route", f"{kind}/{outcome.value}".encode()))
        is_sse = upstream.content_type == "text/event-stream"
        status = upstream.status
        watch = IdleWatch(upstream.content, self.config.idle_timeout)
        splice: Splice | None = None
        pooled = upstream.content if type(upstream) is UpstreamResponse else None
        try:
            # The head waits for the body's first bytes only if they are in hand already: a
            # replica's head must reach the client while it is still prefilling.
            held = pooled is not None and pooled.buffered
            await exchange.start(status, upstream.reason, headers, upstream.content_length, held)
            first = True
            ends_event = True
            if status == 200 and exchange.path == RESPONSES_PATH:
                # A created Response: learn where it is stored from its head, then relay that.
                head = await self.responses.learn(upstream.content, is_sse, url)
                if head:
                    await exchange.write(head)
                    self.first_chunk(ticket, received, is_sse)
                    first = False
                    ends_event = head.endswith(b"\n\n")
            if pooled is not None:
                # Every chunk, the first included, is written from the replica's data callback.
                splice = Splice(pooled, exchange, watch)
                if first:
                    splice.on_first = lambda: self.first_chunk(ticket, received, is_sse)
                await splice.run()
                last = splice.last_bytes
                await exchange.end(last)  # the last bytes and the end (the head too): one write
                if splice.on_first is not None and last:  # the whole body came with its end
                    self.first_chunk(ticket, received, is_sse)
            else:
                async for chunk in upstream.content.iter_any():
                    watch.tick()
                    await exchange.write(chunk)
                    ends_event = chunk.endswith(b"\n\n")
                    if first:
                        self.first_chunk(ticket, received, is_sse)
                        first = False
                await exchange.end()
            upstream.release()
            self.replicas.record_success(url)
        except (
            UpstreamError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientConnectionError,
            asyncio.TimeoutError,
        ) as error:
            upstream.close()  # the replica sees the close and aborts the request, freeing its KV
            if exchange.client_gone():
                # The client left, and a write noticed before the handler was cancelled:
                # nothing to tell it, and nothing for the server to log as an error.
                self.record(url, kind, CLIENT_CLOSED, received)
                return
            metrics.UPSTREAM_ERRORS.labels(url, "stream").inc()
            self.replicas.record_failure(
                url, time.monotonic(), f"stream broken: {type(error).__name__}"
            )
            if splice is not None and splice.last:
                ends_event = splice.last.endswith(b"\n\n")
            await self.end_broken_stream(exchange, is_sse, ends_event)
            status = 502
        except asyncio.CancelledError:
            upstream.close()
            self.record(url, kind, CLIENT_CLOSED, received)
            raise
        finally:
            watch.stop()
        self.record(url, kind, status, received)
        if self.debug:
            self.log_request(exchange, url, kind, outcome.value, upstream.status, received)

    def first_chunk(self, ticket: Ticket, received: float, is_sse: bool) -> None:
        """The first bytes reached the client: time to first token, and the load it ends."""
        url = ticket.account.url
        ttft = time.perf_counter() - received
        metrics.ttft(url).observe(ttft)
        # A stream's first chunk ends prefill; a plain body's first chunk ends it all.
        self.loads.first_token(ticket, ttft if is_sse else None)
        slow = self.outliers.observe(url, ttft, time.monotonic())
        if slow is not None:
            self.replicas.eject(url, time.monotonic(), slow)

    async def end_broken_stream(self, exchange: Exchange, is_sse: bool, ends_event: bool) -> None:
        """Once bytes reached the client, an SSE stream ends with an error event, not a hang."""
        if not is_sse:
            exchange.cut()  # a truncated body, visibly: the connection drops
            return
        error = {
            "error": {"message": "upstream stream broken", "type": "upstream_error", "code": 502}
        }
        event = (
            (b"" if ends_event else b"\n\n")
            + SSE_ERROR_PREFIX
            + json.dumps(error).encode()
            + b"\n\n"
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await exchange.end(event)

    def finish(
        self, exchange: Exchange, reply: Reply, kind: str, url: str | None, received: float
    ) -> None:
        exchange.reply(reply)
        self.record(url, kind, reply.status, received)

    def record(self, url: str | None, kind: str, status: int, received: float) -> None:
        metrics.requests(url or "none", kind, str(status)).inc()
        metrics.DURATION.observe(time.perf_counter() - received)

    def log_request(
        self, exchange: Exchange, url: str, kind: str, outcome: str, status: int, received: float
    ) -> None:
        session = exchange.headers.get("X-Session-Id")
        log.debug(
            json.dumps(
                {
                    "path": exchange.path,
                    "replica": url,
                    "key_kind": kind,
                    "route": outcome,
                    "status": status,
                    "session": redact(session) if session else None,
                    "duration_ms": round((time.perf_counter() - received) * 1000, 2),
                }
            )
        )
