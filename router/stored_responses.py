"""Where vLLM's stored Responses live: learned from relayed responses, located by asking.

vLLM (with VLLM_ENABLE_RESPONSES_API_STORE=1) keeps each stored response in the memory of the
process that served it, so a request that continues one (`previous_response_id`) or reads it
(`/v1/responses/{id}`) must reach that replica whatever its key says. The router learns
id -> replica from the first SSE event of a relayed stream, or the JSON body of a relayed
response, without looking at the rest of the stream. An id it does not know (a restart, another
router instance relayed it, the entry expired) is located by asking every healthy replica at once
for it (`GET /v1/responses/{id}`); the answer is remembered. When every healthy replica answers
404, that 404 (vLLM's own) is what the client gets (docs/design.md, "Stored Responses").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote

import aiohttp

from router import metrics
from router.config import Config
from router.core.response_owners import ResponseOwners
from router.replicas import ReplicaSet
from router.upstream import UpstreamBody

# A relayed response's head read to learn its id: the first SSE event (vLLM's response.created
# echoes the request's instructions and tools) or a whole JSON body. Beyond this it is relayed
# unread, and the id is located on its next use instead.
MAX_HEAD_BYTES = 1 << 20
RESPONSES_PATH = "/v1/responses"


class Found(str, Enum):
    """How a response id's replica was found (all but `known` and `unknown` are counted, with
    `learned`, as the `event` of router_stored_responses_total)."""

    KNOWN = "known"  # in the table
    LOCATED = "located"  # not in the table; a replica said it holds it
    LOST = "lost"  # every healthy replica said 404
    UNAVAILABLE = "unavailable"  # the replica that holds it is ejected
    UNKNOWN = "unknown"  # some replicas did not answer: cannot tell


@dataclass(frozen=True, slots=True)
class Owner:
    """The replica holding a stored response, or why there is none."""

    found: Found
    replica: str | None = None
    not_found: bytes = b""  # vLLM's own 404 body, when no healthy replica holds it


@dataclass(frozen=True, slots=True)
class Located:
    replica: str | None
    not_found: bytes | None  # a 404 body, when every healthy replica answered 404


class StoredResponses:
    """The response id -> replica table and the I/O that fills it."""

    def __init__(self, config: Config, replicas: ReplicaSet, session: aiohttp.ClientSession):
        self.owners = ResponseOwners(config.responses_table_size, config.responses_ttl)
        self.replicas = replicas
        self.session = session
        self.static_headers = config.static_headers
        self.timeout = aiohttp.ClientTimeout(total=config.responses_locate_timeout)
        self._locating: dict[str, asyncio.Task[Located]] = {}

    async def owner(self, response_id: str, headers: Mapping[str, str]) -> Owner:
        """The replica holding `response_id`; `headers` (the client's Authorization, when it
        passes through to vLLM) go with a look-up, besides the static and per-replica headers."""
        replica = self.owners.get(response_id, time.monotonic())
        member = self.replicas.get(replica) if replica is not None else None
        if member is None:  # unknown, or its replica left the fleet
            located = await self._locate_once(response_id, headers)
            if located.replica is not None:
                metrics.STORED_RESPONSES.labels(Found.LOCATED.value).inc()
                return Owner(Found.LOCATED, located.replica)
            if located.not_found is not None:
                metrics.STORED_RESPONSES.labels(Found.LOST.value).inc()
                return Owner(Found.LOST, not_found=located.not_found)
            return Owner(Found.UNKNOWN)
        if not member.healthy:
            metrics.STORED_RESPONSES.labels(Found.UNAVAILABLE.value).inc()
            return Owner(Found.UNAVAILABLE, member.url)
        return Owner(Found.KNOWN, member.url)

    async def _locate_once(self, response_id: str, headers: Mapping[str, str]) -> Located:
        """One look-up per id at a time: concurrent requests for it share the answer."""
        task = self._locating.get(response_id)
        if task is None:
            task = asyncio.create_task(self._locate(response_id, headers))
            self._locating[response_id] = task
            task.add_done_callback(lambda _: self._locating.pop(response_id, None))
        return await asyncio.shield(task)

    async def _locate(self, response_id: str, headers: Mapping[str, str]) -> Located:
        path = f"{RESPONSES_PATH}/{quote(response_id, safe='')}"
        asks = [
            asyncio.create_task(self._ask(r.url, path, {**headers, **r.headers}))
            for r in self.replicas.replicas.values()
            if r.healthy
        ]
        not_found: list[bytes] = []
        try:
            for answer in asyncio.as_completed(asks):
                url, status, body = await answer
                if status == 200:
                    self.owners.put(response_id, url, time.monotonic())
                    return Located(url, None)
                if status == 404:
                    not_found.append(body)
        finally:
            for ask in asks:
                ask.cancel()
        # Lost only when every healthy replica said so; a silent one might hold it.
        return Located(None, not_found[0] if asks and len(not_found) == len(asks) else None)

    async def _ask(self, url: str, path: str, headers: Mapping[str, str]) -> tuple[str, int, bytes]:
        """`GET url+path`: (url, status, the body of a 404); status 0 when it did not answer."""
        try:
            async with self.session.get(
                url + path, headers={**self.static_headers, **headers}, timeout=self.timeout
            ) as response:
                body = await response.read()
                return url, response.status, body if response.status == 404 else b""
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return url, 0, b""

    async def learn(
        self, content: UpstreamBody | aiohttp.StreamReader, is_sse: bool, replica: str
    ) -> bytes:
        """Read a relayed response's first SSE event, or its whole JSON body (up to
        MAX_HEAD_BYTES), remember the response id it carries as held by `replica`, and return
        what was read: the caller relays it, then the rest of the stream untouched."""
        head = bytearray()
        complete = False
        while len(head) < MAX_HEAD_BYTES:
            chunk = await content.readany()
            if not chunk:
                complete = True
                break
            searched = max(len(head) - 1, 0)  # an event's blank line may straddle two chunks
            head += chunk
            if is_sse and head.find(b"\n\n", searched) >= 0:
                complete = True
                break
        read = bytes(head)
        if complete:
            response_id = first_event_id(read) if is_sse else body_id(read)
            if response_id is not None:
                self.owners.put(response_id, replica, time.monotonic())
                metrics.STORED_RESPONSES.labels("learned").inc()
        return read


def first_event_id(stream_head: bytes) -> str | None:
    """The response id in a Responses stream's first event (`response.created`)."""
    event = stream_head.split(b"\n\n", 1)[0]
    data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    response = _json(data)
    response = response.get("response") if isinstance(response, dict) else None
    return _id(response)


def body_id(body: bytes) -> str | None:
    """The response id of a Responses JSON body."""
    return _id(_json(body))


def _json(raw: bytes) -> Any:
    with contextlib.suppress(ValueError, RecursionError):
        return json.loads(raw)
    return None


def _id(response: Any) -> str | None:
    if isinstance(response, dict) and response.get("object") == "response":
        response_id = response.get("id")
        if isinstance(response_id, str) and response_id:
            return response_id
    return None
