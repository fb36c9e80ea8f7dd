"""The strategies behind `--policy`, one interface: a turn + loads -> ordered candidates.

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

from router.core.keys import KeyKind, RoutingKey
from router.core.loads import Loads, LoadTable, ReplicaLoad
from router.core.placement import (
    DEFAULT_CONVERSATION_TTL,
    DEFAULT_CONVERSATIONS,
    DEFAULT_FIRST_TURN_CHOICES,
    SPILL_CHOICES,
    ConversationTable,
    Placed,
    cheaper_elsewhere,
    place_first_turn,
    within_bound,
)
from router.core.ring import (
    DEFAULT_LOAD_FACTOR,
    DEFAULT_VNODES,
    HashRing,
    SpillTable,
    bounded,
    capacity,
)

# Messages one turn adds at most, as a rule: the answer (with its tool calls) and the next user
# message, or a tool call's results. More than this since the last turn routed here means this
# instance missed a turn: another one served it.
ITEMS_PER_TURN = 3


class Outcome(str, Enum):
    """Why a request went where it went: the `outcome` label of router_route_decisions_total."""

    HOME = "home"  # where its conversation's cache is (or its ring home, when not known)
    PLACED = "placed"  # a first turn, placed on the least loaded of its first ring candidates
    FOUND = "found"  # engine truth: the replica holding the most of this prompt
    SPILLED = "spilled"  # home too busy: moved (session: cost-aware; consistent_hash: at capacity)
    STICKY_SPILL = "sticky_spill"  # consistent_hash: home still at capacity, back where it spilled
    FAILOVER = "failover"  # its replica is out, or the first candidate failed before any byte
    NO_KEY = "no_key"  # nothing to hash: least loaded
    BALANCED = "balanced"  # a policy that ignores keys (round_robin, random, least_loaded)
    STORED_RESPONSE = "stored_response"  # to the replica holding the stored Response it names


@dataclass(frozen=True, slots=True)
class Turn:
    """One request as placement sees it."""

    key: RoutingKey
    tokens: float  # estimated prompt tokens
    first: bool = False  # no earlier turn in it: its conversation has no cache anywhere yet
    length: int = 0  # messages (or input items) it carries; 0 when unknown
    # Engine truth, once looked up: for each replica publishing KV-cache events, how much of
    # this prompt it holds, in the units of `tokens`.
    cached: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    candidates: tuple[str, ...]
    outcome: Outcome
    tokens: float = 0.0  # estimated tokens the first candidate must prefill (not cached there)
    lookup: bool = False  # ask engine truth where the prompt is cached, then route again


class Policy(Protocol):
    name: str

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        """Membership changed: rebuild whatever depends on it, once."""

    def route(self, turn: Turn, loads: Loads, now: float, attempts: int) -> Route:
        """Ordered candidates among the healthy replicas."""

    def moved(self, turn: Turn, replica: str, now: float) -> None:
        """A failover candidate served the turn: its conversation's cache is there now."""


def least_loaded(loads: LoadTable, attempts: int) -> tuple[str, ...]:
    # Ties broken by name so that the choice is deterministic.
    best = heapq.nsmallest(attempts, loads.items(), key=lambda item: (item[1], item[0]))
    return tuple(replica for replica, _ in best)


def _take(first: str, rest: Iterator[str], attempts: int) -> tuple[str, ...]:
    return (first, *itertools.islice(rest, max(attempts - 1, 0)))


class SessionPolicy:
    """Session affinity with work-based placement: the product's default.

    A conversation's first turn goes to the least pressed (in work and in live KV footprint) of
    its first ring candidates; later turns go where its cache is, and leave only when their home
    is past the bound and waiting there costs more than re-prefilling the whole history
    elsewhere. The ring orders the candidates, so a router that has not seen a conversation
    (restarted, or another instance) sends it to its ring home, unless engine truth (the
    replicas' KV-cache events) says where its prompt is cached: `lookup` decides when to ask.
    """

    name = "session"

    def __init__(
        self,
        vnodes: int = DEFAULT_VNODES,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        conversations: ConversationTable | None = None,
        first_turn_choices: int = DEFAULT_FIRST_TURN_CHOICES,
        lookup: str = "never",
    ) -> None:
        if lookup not in LOOKUP_MODES:
            raise ValueError(f"lookup must be one of {', '.join(LOOKUP_MODES)}")
        self.vnodes = vnodes
        self.load_factor = load_factor
        self.first_turn_choices = max(first_turn_choices, 1)
        self.conversations = conversations if conversations is not None else ConversationTable()
        self.lookup = lookup
        self.ring = HashRing({}, vnodes)

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        self.conversations.forget_replicas(self.ring.replicas - set(weights))
        self.ring = HashRing(weights, self.vnodes)

    def route(self, turn: Turn, loads: Loads, now: float, attempts: int) -> Route:
        if not loads.healthy_count():
            return Route((), Outcome.NO_KEY, turn.tokens)
        if turn.key.is_none:
            order = heapq.nsmallest(
                attempts, loads.healthy(), key=lambda a: (loads.wait(a, turn.tokens), a.url)
            )
            return Route(tuple(a.url for a in order), Outcome.NO_KEY, turn.tokens)
        point = turn.key.point
        chosen = self._choose(turn, loads, now)
        if isinstance(chosen, LookUp):
            return Route((), Outcome.HOME, turn.tokens, lookup=True)
        if chosen is None:  # healthy replicas that are not on the ring yet
            return Route(least_loaded(loads.table, attempts), Outcome.NO_KEY, turn.tokens)
        first, outcome, owed = chosen
        self.conversations.put(point, first.url, turn.tokens, now, turn.length)
        rest = (a.url for a in self._healthy_walk(point, loads) if a is not first)
        return Route(_take(first.url, rest, attempts), outcome, owed)

    def _choose(self, turn: Turn, loads: Loads, now: float) -> Choice | LookUp | None:
        """Where the turn goes, why, and the tokens it must prefill there; or LOOK_UP."""
        point, truth = turn.key.point, turn.cached
        placed = self.conversations.get(point, now)
        # A prompt-anchor key may be shared by conversations that open alike (an agent's fixed
        # preamble): with engine truth, where this prompt is cached matters, not the key's entry.
        if placed is not None and turn.key.kind is KeyKind.PREFIX and truth is not None:
            placed = None
        home = loads.get(placed.replica) if placed is not None else None
        if home is not None and not home.healthy:
            home = None
        if truth is None and self._in_doubt(turn, placed, home):
            return LOOK_UP
        if truth:
            found = self._found(turn, truth, loads, home)
            if found is not None:
                home, outcome = found
                return self._stay_or_spill(turn, home, outcome, loads)
        if placed is not None and home is None:  # its cache is gone with its replica
            return self._place(turn, loads, Outcome.FAILOVER)
        if home is not None:
            assert placed is not None
            grown = turn.tokens - placed.tokens
            owed = grown if grown >= 0 else turn.tokens  # a shorter prompt: history was cut
            return self._stay_or_spill(turn, home, Outcome.HOME, loads, owed)
        if turn.first or truth is not None:
            return self._place(turn, loads, Outcome.PLACED)
        # A later turn this router has not seen (a restart, another instance served it): the
        # ring's home is where a router that placed it freely most likely put it.
        ring_home = next(self._healthy_walk(point, loads), None)
        if ring_home is None:
            return None
        return self._stay_or_spill(turn, ring_home, Outcome.HOME, loads)

    def _in_doubt(self, turn: Turn, placed: Placed | None, home: ReplicaLoad | None) -> bool:
        """Whether to ask engine truth before choosing: always, or when this router cannot know
        where the conversation's cache is (a later turn it has not seen, a replica gone, a key
        that several conversations may share, turns served by another instance since this one
        last routed it: that instance may have moved it)."""
        if self.lookup == "always":
            return True
        if self.lookup == "never" or turn.first:
            return False
        if home is None or turn.key.kind is KeyKind.PREFIX:
            return True
        assert placed is not None
        return bool(placed.length) and turn.length > placed.length + ITEMS_PER_TURN

    def _found(
        self, turn: Turn, truth: Mapping[str, float], loads: Loads, home: ReplicaLoad | None
    ) -> tuple[ReplicaLoad, Outcome] | None:
        """The replica holding the most of this prompt, by engine truth; among equals, the
        conversation's home, else the least pressed. None when none holds any of it."""
        best = max(truth.values(), default=0.0)
        if best <= 0:
            return None
        holders = []
        for url, cached in truth.items():
            account = loads.get(url)
            if cached == best and account is not None and account.healthy:
                holders.append(account)
        if not holders:
            return None
        if home is not None and home in holders:
            return home, Outcome.HOME
        if len(holders) == 1:
            return holders[0], Outcome.FOUND
        chosen = place_first_turn(holders, turn.tokens, loads, self.conversations)
        return chosen, Outcome.FOUND

    def _stay_or_spill(
        self,
        turn: Turn,
        home: ReplicaLoad,
        outcome: Outcome,
        loads: Loads,
        owed: float | None = None,
    ) -> Choice | LookUp:
        if owed is None:
            owed = turn.tokens - (turn.cached or {}).get(home.url, 0.0)
        healthy = loads.healthy_count()
        if within_bound(
            loads.owed(home), loads.fleet_owed(), turn.tokens, healthy, self.load_factor
        ):
            return home, outcome, owed  # the common case: nothing more to weigh
        needs = _needs(turn)
        alternatives = itertools.islice(
            self._healthy_walk(turn.key.point, loads), SPILL_CHOICES + 1
        )
        target = cheaper_elsewhere(home, owed, alternatives, loads, needs)
        if target is not None:
            if turn.cached is None and self.lookup != "never":
                return LOOK_UP  # moving costs a prefill: first learn exactly what it costs
            return target, Outcome.SPILLED, needs(target)
        return home, outcome, owed

    def _place(self, turn: Turn, loads: Loads, outcome: Outcome) -> Choice | None:
        walk = self._healthy_walk(turn.key.point, loads)
        choices = list(itertools.islice(walk, self.first_turn_choices))
        if not choices:
            return None
        chosen = place_first_turn(choices, turn.tokens, loads, self.conversations)
        return chosen, outcome, _needs(turn)(chosen)

    def moved(self, turn: Turn, replica: str, now: float) -> None:
        if not turn.key.is_none:
            self.conversations.put(turn.key.point, replica, turn.tokens, now, turn.length)

    def _healthy_walk(self, point: int, loads: Loads) -> Iterator[ReplicaLoad]:
        """Healthy replicas in ring order from `point`: the remembered leading ones first."""
        leading = self.ring.leading(point)
        for url in leading:
            account = loads.get(url)
            if account is not None and account.healthy:
                yield account
        if len(leading) < len(self.ring):
            for url in itertools.islice(self.ring.walk(point), len(leading), None):
                account = loads.get(url)
                if account is not None and account.healthy:
                    yield account


class LookUp:
    """_choose's answer when engine truth should be asked first."""


Choice = tuple[ReplicaLoad, Outcome, float]
LOOK_UP = LookUp()
LOOKUP_MODES = ("never", "doubt", "always")


def _needs(turn: Turn) -> Callable[[ReplicaLoad], float]:
    """The tokens `turn` must prefill on a replica: all of them, less what engine truth says
    is cached there."""
    truth = turn.cached or {}
    return lambda account: turn.tokens - truth.get(account.url, 0.0)


class ConsistentHashPolicy:
    """Consistent hashing with loads bounded by request count, and spill stickiness.

    The classic alternative (Envoy's ring hash with bounded load): a key's home takes it while
    its in-flight count is below ceil(c * (total + 1) / n). `--load-factor 100` turns the bound
    off: a plain consistent hash.
    """

    name = "consistent_hash"

    def __init__(
        self,
        vnodes: int = DEFAULT_VNODES,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        spill: SpillTable | None = None,
    ) -> None:
        self.vnodes = vnodes
        self.load_factor = load_factor
        if spill is None:
            spill = SpillTable(DEFAULT_CONVERSATIONS, DEFAULT_CONVERSATION_TTL)
        self.spill = spill
        self.ring = HashRing({}, vnodes)

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        self.ring = HashRing(weights, self.vnodes)

    def route(self, turn: Turn, loads: Loads, now: float, attempts: int) -> Route:
        return self.route_counts(turn.key, loads.table, now, attempts, turn.tokens)

    def route_counts(
        self, key: RoutingKey, loads: LoadTable, now: float, attempts: int, tokens: float = 0.0
    ) -> Route:
        if key.is_none or not loads:
            return Route(least_loaded(loads, attempts), Outcome.NO_KEY, tokens)
        limit = capacity(loads.total, len(loads), self.load_factor)
        home = next((r for r in self.ring.walk(key.point) if r in loads), None)
        if home is None:  # healthy replicas that are not on the ring yet
            return Route(least_loaded(loads, attempts), Outcome.NO_KEY, tokens)
        order = bounded(self.ring.walk(key.point), loads, limit)
        first = next(order)
        if first == home:
            self.spill.drop(key.point)
            return Route(_take(first, order, attempts), Outcome.HOME, tokens)
        sticky = self.spill.get(key.point, now)
        if sticky is not None and sticky != home and (loads.get(sticky) or 0) < limit:
            outcome, first = Outcome.STICKY_SPILL, sticky
            order = (r for r in bounded(self.ring.walk(key.point), loads, limit) if r != sticky)
        else:
            outcome = Outcome.SPILLED
        self.spill.put(key.point, first, now)
        return Route(_take(first, order, attempts), outcome, tokens)

    def moved(self, turn: Turn, replica: str, now: float) -> None:
        pass  # failover stays the ring's business: the next turn walks the ring again


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        pass

    def route(self, turn: Turn, loads: Loads, now: float, attempts: int) -> Route:
        healthy = loads.table.replicas()
        if not healthy:
            return Route((), Outcome.BALANCED, turn.tokens)
        start = next(self._counter) % len(healthy)
        count = min(attempts, len(healthy))
        order = tuple(healthy[(start + i) % len(healthy)] for i in range(count))
        return Route(order, Outcome.BALANCED, turn.tokens)

    def moved(self, turn: Turn, replica: str, now: float) -> None:
        pass


class RandomPolicy:
    name = "random"

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        pass

    def route(self, turn: Turn, loads: Loads, now: float, attempts: int) -> Route:
        healthy = loads.table.replicas()
        order = tuple(self._rng.sample(healthy, min(attempts, len(healthy))))
        return Route(order, Outcome.BALANCED, turn.tokens)

    def moved(self, turn: Turn, replica: str, now: float) -> None:
        pass


class LeastLoadedPolicy:
    name = "least_loaded"

    def set_replicas(self, weights: Mapping[str, float]) -> None:
        pass

    def route(self, turn: Turn, loads: Loads, now: float, attempts: int) -> Route:
        return Route(least_loaded(loads.table, attempts), Outcome.BALANCED, turn.tokens)

    def moved(self, turn: Turn, replica: str, now: float) -> None:
        pass


POLICY_NAMES = ("session", "consistent_hash", "round_robin", "random", "least_loaded")


def make_policy(
    name: str,
    vnodes: int = DEFAULT_VNODES,
    load_factor: float = DEFAULT_LOAD_FACTOR,
    conversations: ConversationTable | None = None,
    spill: SpillTable | None = None,
    first_turn_choices: int = DEFAULT_FIRST_TURN_CHOICES,
    lookup: str = "never",
    rng: _random.Random | None = None,
) -> Policy:
    factories: dict[str, Callable[[], Policy]] = {
        "session": lambda: SessionPolicy(
            vnodes, load_factor, conversations, first_turn_choices, lookup
        ),
        "consistent_hash": lambda: ConsistentHashPolicy(vnodes, load_factor, spill),
        "round_robin": RoundRobinPolicy,
        "random": lambda: RandomPolicy(rng),
        "least_loaded": LeastLoadedPolicy,
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return factories[name]()
