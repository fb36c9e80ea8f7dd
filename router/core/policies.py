"""The strategies behind `--policy`, one interface: key + loads -> ordered candidates.

`route()` returns at most `attempts` candidates: the first is where the request goes, the rest
are failover in order ("attempt n+1" of the same choice). Pure: time and randomness are passed in.
"""

from __future__ import annotations

import heapq
import itertools
import random as _random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from router.core.keys import RoutingKey
from router.core.loads import LoadTable
from router.core.ring import (
    DEFAULT_LOAD_FACTOR,
    DEFAULT_VNODES,
    HashRing,
    SpillTable,
    bounded,
    capacity,
)


class Outcome(str, Enum):
    HOME = "home"  # the key's first healthy replica on the ring
    SPILLED = "spilled"  # home at capacity: the next replica below capacity
    STICKY_SPILL = "sticky_spill"  # home still at capacity: back where the key spilled before
    NO_KEY = "no_key"  # nothing to hash: least loaded
    BALANCED = "balanced"  # a policy that ignores keys (round_robin, random, least_loaded)
    FAILOVER = "failover"  # the first candidate failed before any byte: the next one


@dataclass(frozen=True, slots=True)
class Route:
    candidates: tuple[str, ...]
    outcome: Outcome


class Policy(Protocol):
    name: str

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        """Membership changed: rebuild whatever depends on it, once."""

    def route(self, key: RoutingKey, loads: LoadTable, now: float, attempts: int) -> Route:
        """Ordered candidates among the healthy replicas in `loads`."""


def least_loaded(loads: LoadTable, attempts: int) -> tuple[str, ...]:
    # Ties broken by name so that the choice is deterministic.
    best = heapq.nsmallest(attempts, loads.items(), key=lambda item: (item[1], item[0]))
    return tuple(replica for replica, _ in best)


class SessionPolicy:
    """Consistent hashing with bounded loads and spill stickiness: the product's default."""

    name = "session"

    def __init__(
        self,
        vnodes: int = DEFAULT_VNODES,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        spill: SpillTable | None = None,
    ) -> None:
        self.vnodes = vnodes
        self.load_factor = load_factor
        self.spill = spill if spill is not None else SpillTable()
        self.ring = HashRing({}, vnodes)

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        self.ring = HashRing(weights, self.vnodes)

    def route(self, key: RoutingKey, loads: LoadTable, now: float, attempts: int) -> Route:
        if key.is_none or not loads:
            return Route(least_loaded(loads, attempts), Outcome.NO_KEY)
        limit = capacity(loads.total, len(loads), self.load_factor)
        home = next((r for r in self.ring.walk(key.point) if r in loads), None)
        if home is None:  # healthy replicas that are not on the ring yet
            return Route(least_loaded(loads, attempts), Outcome.NO_KEY)
        order = bounded(self.ring.walk(key.point), loads, limit)
        first = next(order)
        if first == home:
            self.spill.drop(key.point)
            return Route(_take(first, order, attempts), Outcome.HOME)
        sticky = self.spill.get(key.point, now)
        if sticky is not None and sticky != home and (loads.get(sticky) or 0) < limit:
            outcome, first = Outcome.STICKY_SPILL, sticky
            order = (r for r in bounded(self.ring.walk(key.point), loads, limit) if r != sticky)
        else:
            outcome = Outcome.SPILLED
        self.spill.put(key.point, first, now)
        return Route(_take(first, order, attempts), outcome)


def _take(first: str, rest: Iterator[str], attempts: int) -> tuple[str, ...]:
    return (first, *itertools.islice(rest, max(attempts - 1, 0)))


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        pass

    def route(self, key: RoutingKey, loads: LoadTable, now: float, attempts: int) -> Route:
        healthy = loads.replicas()
        if not healthy:
            return Route((), Outcome.BALANCED)
        start = next(self._counter) % len(healthy)
        count = min(attempts, len(healthy))
        order = tuple(healthy[(start + i) % len(healthy)] for i in range(count))
        return Route(order, Outcome.BALANCED)


class RandomPolicy:
    name = "random"

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        pass

    def route(self, key: RoutingKey, loads: LoadTable, now: float, attempts: int) -> Route:
        healthy = loads.replicas()
        order = tuple(self._rng.sample(healthy, min(attempts, len(healthy))))
        return Route(order, Outcome.BALANCED)


class LeastLoadedPolicy:
    name = "least_loaded"

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        pass

    def route(self, key: RoutingKey, loads: LoadTable, now: float, attempts: int) -> Route:
        return Route(least_loaded(loads, attempts), Outcome.BALANCED)


POLICY_NAMES = ("session", "round_robin", "random", "least_loaded")


def make_policy(
    name: str,
    vnodes: int = DEFAULT_VNODES,
    load_factor: float = DEFAULT_LOAD_FACTOR,
    spill: SpillTable | None = None,
    rng: _random.Random | None = None,
) -> Policy:
    factories: dict[str, Callable[[], Policy]] = {
        "session": lambda: SessionPolicy(vnodes, load_factor, spill),
        "round_robin": RoundRobinPolicy,
        "random": lambda: RandomPolicy(rng),
        "least_loaded": LeastLoadedPolicy,
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return factories[name]()
