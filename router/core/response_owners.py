"""Which replica holds each stored Response: vLLM keeps them in the serving process's memory.

A request that continues a stored response (`previous_response_id`) or reads, deletes or cancels
one (`/v1/responses/{id}`) can only be served by the replica that stored it. The table is a cache
of that fact, learned from the responses the router relays; a miss is resolved by asking the
replicas (router/stored_responses.py), so a lost entry costs a look-up, never a wrong answer.
Pure: time is passed in (docs/design.md, "Stored Responses").
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

DEFAULT_RESPONSE_OWNERS = 100_000  # entries (about 150 bytes each)
DEFAULT_RESPONSE_TTL = 3600.0  # seconds an id is remembered after it was last used
MAX_RESPONSE_ID_CHARS = 256  # vLLM's ids are `resp_` + 32 hex digits; longer ones are not looked up


class ResponseOwners:
    """Response id -> the replica that stored it; bounded in entries (least recently used go
    first) and in time (an id unused for `ttl` seconds is forgotten)."""

    def __init__(
        self, max_entries: int = DEFAULT_RESPONSE_OWNERS, ttl: float = DEFAULT_RESPONSE_TTL
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        # Ordered by last use, oldest first; every use sets the same ttl, so expiry follows order.
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def get(self, response_id: str, now: float) -> str | None:
        self._expire(now)
        entry = self._owners.get(response_id)
        if entry is None:
            return None
        self._owners[response_id] = (entry[0], now + self.ttl)
        self._owners.move_to_end(response_id)
        return entry[0]

    def put(self, response_id: str, replica: str, now: float) -> None:
        if self.max_entries <= 0:
            return
        self._expire(now)
        self._owners[response_id] = (replica, now + self.ttl)
        self._owners.move_to_end(response_id)
        while len(self._owners) > self.max_entries:
            self._owners.popitem(last=False)

    def forget(self, response_id: str) -> None:
        self._owners.pop(response_id, None)

    def _expire(self, now: float) -> None:
        owners = self._owners
        while owners:
            oldest = next(iter(owners.values()))
            if oldest[1] > now:
                return
            owners.popitem(last=False)


def stored_response_id(value: Any) -> str | None:
    """`value` as a response id worth looking up: a non-empty printable string of bounded length
    (anything else is left to the replica to refuse)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_RESPONSE_ID_CHARS and value.isprintable():
        return value
    return None
