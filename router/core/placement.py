"""Where a conversation goes, and when it may move: first-turn placement and cost-aware spills.

Pure: loads and time are passed in. A conversation's first turn has no cache anywhere, so it may
go to the least loaded of its first few ring candidates; from then on its cache is where it went,
and a later turn leaves that replica only when waiting there would cost more than prefilling the
whole history elsewhere. The table that remembers where each conversation lives is bounded in
entries and in time (docs/design.md, "Ring and placement").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router.core.loads import Loads, ReplicaLoad

DEFAULT_CONVERSATIONS = 100_000  # entries of the placement table (about 100 bytes each)
DEFAULT_CONVERSATION_TTL = 600.0  # seconds a conversation is remembered after its last turn
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
    expires: float


class ConversationTable:
    """Conversation (its key's point) -> the replica holding its cache, with each replica's live
    footprint: the summed prompt size of the conversations it holds. Least recently used entries
    go first when full; entries expire `ttl` seconds after their last turn."""

    def __init__(
        self, max_entries: int = DEFAULT_CONVERSATIONS, ttl: float = DEFAULT_CONVERSATION_TTL
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[int, Placed] = OrderedDict()
        self.footprint: dict[str, float] = {}
        self.total_footprint = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, point: int, now: float) -> Placed | None:
        self._expire(now)
        return self._entries.get(point)

    def put(self, point: int, replica: str, tokens: float, now: float) -> None:
        if self.max_entries <= 0:
            return
        old = self._entries.pop(point, None)
        if old is not None:
            self._release(old)
        self._entries[point] = Placed(replica, tokens, now + self.ttl)
        self.footprint[replica] = self.footprint.get(replica, 0.0) + tokens
        self.total_footprint += tokens
        while len(self._entries) > self.max_entries:
            self._release(self._entries.popitem(last=False)[1])

    def forget_replicas(self, gone: Iterable[str]) -> None:
        """Replicas that left hold nothing: their conversations are placed afresh."""
        for replica in gone:
            self.total_footprint -= self.footprint.pop(replica, 0.0)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.expires > now:
                return
            self._release(entries.popitem(last=False)[1])

    def _release(self, placed: Placed) -> None:
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
    factor: float,
) -> ReplicaLoad:
    """The first of `choices` (ring order) within bound in work and in live footprint; if none
    is, the one least loaded in both, each relative to the fleet's total."""
    total_owed, healthy = loads.fleet_owed(), loads.healthy_count()
    footprint, total_footprint = conversations.footprint, conversations.total_footprint
    for account in choices:
        if within_bound(loads.owed(account), total_owed, tokens, healthy, factor) and within_bound(
            footprint.get(account.url, 0.0), total_footprint, tokens, healthy, factor
        ):
            return account

    def pressure(account: ReplicaLoad) -> float:
        work = loads.owed(account) / (total_owed + tokens)
        return work + footprint.get(account.url, 0.0) / (total_footprint + tokens)

    return min(choices, key=pressure)


def spill_target(
    home: ReplicaLoad,
    new_tokens: float,
    history_tokens: float,
    alternatives: Iterable[ReplicaLoad],
    loads: Loads,
    factor: float,
) -> ReplicaLoad | None:
    """Where a later turn should go instead of its home, or None to stay.

    It stays while its home is within bound; past the bound, it moves to the alternative where
    its first token comes soonest even though the whole history must be prefilled there, if that
    beats waiting at home to prefill only the new part.
    """
    if within_bound(
        loads.owed(home), loads.fleet_owed(), history_tokens, loads.healthy_count(), factor
    ):
        return None
    best, best_wait = None, loads.wait(home, new_tokens)
    for account in alternatives:
        if account is not home:
            wait = loads.wait(account, history_tokens)
            if wait < best_wait:
                best, best_wait = account, wait
    return best
