"""Consistent hashing with bounded loads. Pure: no I/O, time is passed in.

Three separate pieces, as in Envoy: `HashRing` turns a key's point into replicas in ring order;
`bounded` filters any such order by capacity; `SpillTable` remembers where spilled keys went
(docs/design.md, "Ring and placement").
"""

from __future__ import annotations

import itertools
import math
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import xxhash

from router.core.loads import LoadTable

# 512, not the 160 of ketama: measured over 200 random 8-replica fleets, the most loaded replica's
# share of keys (max/mean) was median 1.111 / p90 1.179 at 160 vnodes and 1.057 / 1.094 at 512.
DEFAULT_VNODES = 512
DEFAULT_LOAD_FACTOR = 1.25
LEADING = 4  # ring candidates remembered per point: home, failovers, first-turn and spill choices
LEADING_CACHE = 65_536  # points remembered (a few MB at most)


class HashRing:
    """Virtual nodes of every replica on a 64-bit ring; identity is the replica's name (URL).

    Points depend only on names and weights, never on the order they were given in, so every
    router instance with the same replica set builds the same ring.
    """

    def __init__(self, weights: Mapping[str, float], vnodes: int = DEFAULT_VNODES) -> None:
        nodes: list[tuple[int, str]] = []
        for replica, weight in weights.items():
            if weight <= 0:
                continue
            count = max(1, round(vnodes * weight))
            nodes.extend(
                (xxhash.xxh3_64_intdigest(f"{replica}#{i}".encode()), replica) for i in range(count)
            )
        nodes.sort()  # ties broken by name: still independent of input order
        self._points = array("Q", (point for point, _ in nodes))  # 8 bytes a point
        self._owners = [owner for _, owner in nodes]
        self.replicas: frozenset[str] = frozenset(self._owners)
        # A conversation asks for its candidates on every turn: the first few are remembered
        # (bounded; the ring is rebuilt, and this forgotten, when membership changes).
        self._leading: dict[int, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self.replicas)

    def walk(self, point: int) -> Iterator[str]:
        """Distinct replicas clockwise from `point`: the home first, then its successors."""
        points, owners = self._points, self._owners
        size = len(points)
        if size == 0:
            return
        start = bisect_right(points, point)
        seen: set[str] = set()
        wanted = len(self.replicas)
        for i in range(start, start + size):
            owner = owners[i % size]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == wanted:
                    return

    def leading(self, point: int) -> tuple[str, ...]:
        """The first LEADING replicas of `walk(point)`, remembered per point."""
        found = self._leading.get(point)
        if found is None:
            if len(self._leading) >= LEADING_CACHE:
                self._leading.clear()  # cheaper than LRU order, and refilled within a turn
            found = self._leading[point] = tuple(itertools.islice(self.walk(point), LEADING))
        return found


def capacity(total_load: float, healthy: int, load_factor: float = DEFAULT_LOAD_FACTOR) -> int:
    """Most load one replica may carry before new keys spill: ceil(c * (total + 1) / n)."""
    return math.ceil(load_factor * (total_load + 1) / max(healthy, 1))


def bounded(order: Iterator[str], loads: LoadTable, limit: int) -> Iterator[str]:
    """Healthy replicas of `order` below `limit` load, in order; then the full ones, in order.

    The full ones come last so that failover still has somewhere to go when every replica below
    capacity has failed; a replica at or above capacity is never first while one below exists.
    """
    full: list[str] = []
    for replica in order:
        load = loads.get(replica)
        if load is None:
            continue  # unhealthy: skipped, the ring itself is unchanged
        if load < limit:
            yield replica
        else:
            full.append(replica)
    yield from full


class SpillTable:
    """Where keys that spilled off their home went, so their later turns find their cache.

    Bounded in entries (least recently used dropped first) and in time (entries expire).
    """

    def __init__(self, max_entries: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[int, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, point: int, now: float) -> str | None:
        entry = self._entries.get(point)
        if entry is None:
            return None
        replica, expires = entry
        if expires <= now:
            del self._entries[point]
            return None
        return replica

    def put(self, point: int, replica: str, now: float) -> None:
        if self.max_entries <= 0:
            return
        self._entries[point] = (replica, now + self.ttl)
        self._entries.move_to_end(point)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, point: int) -> None:
        self._entries.pop(point, None)
