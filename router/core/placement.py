"""Where a conversation goes, and when it may move: first-turn placement and cost-aware spills.

Pure: loads and time are passed in. A conversation's first turn has no cache anywhere, so it may
go to the least loaded of its first few ring candidates; from then on its cache is where it went,
and a later turn leaves that replica only when waiting there would cost more than prefilling the
whole history elsewhere. The table that remembers where each conversation lives is bounded in
entries and in time (docs/design.md, "Ring and placement").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from router.core.loads import Loads, ReplicaLoad

DEFAULT_CONVERSATIONS = 100_000  # entries of the placement table (about 100 bytes each)
DEFAULT_CONVERSATION_TTL = 600.0  # seconds a conversation is remembered after its last turn
# A conversation counts towards its replica's live KV footprint this long after its last turn.
LIVE_WINDOW = 60.0
DEFAULT_FIRST_TURN_CHOICES = 2  # ring candidates a first turn may choose from
# Ring candidates after its home a spilling turn may go to: a few, so a decision costs the same
# in any fleet and spills land where other router instances would send them too.
SPILL_CHOICES = 3
# Request bytes per estimated prompt token: about right for English through a BPE tokenizer and
# JSON; the unit only has to be the same everywhere, since prefill speed is learned in it.
DEFAULT_BYTES_PER_TOKEN = 4.0


@dataclass(slots=True)
class Placed:
    replica: str
    tokens: float  # estimated prompt tokens of its last turn: what its replica holds
    last: float  # when its last turn was routed
    length: int = 0  # messages (or input items) of its last turn; 0 when unknown


class ConversationTable:
    """Conversation (its key's point) -> the replica holding its cache.

    Also each replica's live footprint: the summed prompt size of its conversations that had a
    turn in the last `live_window` seconds (finished ones stop counting long before they are
    forgotten). Entries are forgotten `ttl` seconds after their last turn, or least recently
    used first when the table is full.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_CONVERSATIONS,
        ttl: float = DEFAULT_CONVERSATION_TTL,
        live_window: float = LIVE_WINDOW,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.live_window = min(live_window, ttl)
        # Both ordered by last turn, oldest first: aging pops from the front.
        self._live: OrderedDict[int, Placed] = OrderedDict()
        self._idle: OrderedDict[int, Placed] = OrderedDict()
        self.footprint: dict[str, float] = {}
        self.total_footprint = 0.0
        self._aged_at = float("nan")

    def __len__(self) -> int:
        return len(self._live) + len(self._idle)

    def get(self, point: int, now: float) -> Placed | None:
        self._age(now)
        placed = self._live.get(point)
        return placed if placed is not None else self._idle.get(point)

    def put(self, point: int, replica: str, tokens: float, now: float, length: int = 0) -> None:
        if self.max_entries <= 0:
            return
        self._age(now)
        old = self._live.pop(point, None)
        if old is not None:
            self._uncount(old)
        else:
            self._idle.pop(point, None)
        self._live[point] = Placed(replica, tokens, now, length)
        self.footprint[replica] = self.footprint.get(replica, 0.0) + tokens
        self.total_footprint += tokens
        while len(self) > self.max_entries:
            if self._idle:
                self._idle.popitem(last=False)
            else:
                self._uncount(self._live.popitem(last=False)[1])

    def forget_replicas(self, gone: Iterable[str]) -> None:
        """Replicas that left hold nothing: their conversations are placed afresh."""
        for replica in gone:
            self.total_footprint -= self.footprint.pop(replica, 0.0)

    def _age(self, now: float) -> None:
        if now == self._aged_at:
            return  # a turn's lookup and its update come at the same time: once is enough
        self._aged_at = now
        live, idle = self._live, self._idle
        while live:
            point, oldest = next(iter(live.items()))
            if oldest.last > now - self.live_window:
                break
            del live[point]
            self._uncount(oldest)
            idle[point] = oldest
        while idle:
            oldest = next(iter(idle.values()))
            if oldest.last > now - self.ttl:
                break
            idle.popitem(last=False)

    def _uncount(self, placed: Placed) -> None:
        if placed.replica in self.footprint:
            self.footprint[placed.replica] -= placed.tokens
            self.total_footprint -= placed.tokens


def within_bound(load: float, total: float, tokens: float, healthy: int, factor: float) -> bool:
    """Bounded loads in work: `load` <= c * (total + this request) / n."""
    return load <= factor * (total + tokens) / max(healthy, 1)


def place_first_turn(
    choices: Sequence[ReplicaLoad],
    tokens: float,
    loads: Loads,
    conversations: ConversationTable,
) -> ReplicaLoad:
    """The least pressed of `choices`, the first in ring order on a tie. Pressure is the share of
    the fleet's owed prefill plus the share of its live KV footprint that a replica holds: the
    footprint decides whether its cache keeps what it has; the work, how soon it answers.

    Measured on a skewed workload over two replicas with tight caches (docs/design.md), keeping
    the ring's home unless it held over 62% of the footprint left the hit ratio at 0.63 of the
    ideal; the least pressed of the two reached 0.97.
    """
    total_owed = loads.fleet_owed() + tokens
    footprint = conversations.footprint
    total_footprint = conversations.total_footprint + tokens

    evictions = loads.total_evictions

    def pressure(account: ReplicaLoad) -> float:
        work = loads.owed(account) / total_owed
        churn = account.evictions / evictions if evictions > 0 else 0.0
        return work + footprint.get(account.url, 0.0) / total_footprint + churn

    return min(choices, key=pressure)  # min() keeps the first of equals: ring order


def cheaper_elsewhere(
    home: ReplicaLoad,
    new_tokens: float,
    alternatives: Iterable[ReplicaLoad],
    loads: Loads,
    needs: Callable[[ReplicaLoad], float],
) -> ReplicaLoad | None:
    """For a later turn whose home is past the bound: the alternative where moving costs least,
    if that beats waiting at home to prefill only the new part; else None (stay).

    Moving costs the turn its wait there, prefilling what is not cached there (`needs`: the
    whole history, unless engine truth knows better), and costs the requests that come after
    it there the extra prefill once more: a move that only breaks even for this turn is not
    made. Measured on the default mock workload, weighing the turn alone spilled 4% of the
    turns and held the hit ratio at 0.96 of the ideal.
    """
    best, best_cost = None, loads.wait(home, new_tokens)
    for account in alternatives:
        if account is not home:
            extra = needs(account) - new_tokens
            cost = loads.wait(account, needs(account)) + max(extra, 0.0) / account.fit.rate
            if cost < best_cost:
                best, best_cost = account, cost
    return best
