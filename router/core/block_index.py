"""What each replica has cached, from its KV-cache events, keyed on token content.

Pure: no I/O, no clock (time is passed in). docs/design.md, Engine truth.

A block is known by the router's own chained hash of its token ids (`prompt_blocks`): the same
tokens give the same hash on every replica and in every router instance, while vLLM's own hash
values are seeded per engine process. vLLM's hashes are kept only to apply `BlockRemoved` and to
find a stored block's parent, per replica, data-parallel rank and medium.

The query is one pass over a prompt's block hashes for the whole fleet: for each hash, the set of
replicas holding it is a bit mask, and a replica's run of leading blocks ends at the first hash
whose mask lacks its bit.

Memory is bounded: each (replica, rank, medium) keeps at most its capacity in blocks (the
engine's num_gpu_blocks once known, else `default_capacity`); past it, the least recently stored
block is forgotten (only lost removal events could make an engine seem to hold more).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import xxhash

from router.core.kv_events import (
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EngineHash,
    EventBatch,
)

ROOT = 0  # the parent of a prompt's first block
DEFAULT_CAPACITY = 1 << 18  # blocks per replica, rank and medium until the engine's is known
PRESSURE_WINDOW = 30.0  # seconds: eviction pressure is a moving average over about this long


def prompt_blocks(token_ids: Sequence[int], block_size: int, parent: int = ROOT) -> list[int]:
    """The router's chained hashes of the full blocks of `token_ids`."""
    full = len(token_ids) // block_size
    if full == 0:
        return []
    data = array("Q", token_ids[: full * block_size]).tobytes()
    step = 8 * block_size
    hashes = []
    for start in range(0, len(data), step):
        parent = xxhash.xxh3_64_intdigest(data[start : start + step], seed=parent)
        hashes.append(parent)
    return hashes


def cached_prefix_tokens(blocks: int, block_size: int, prompt_tokens: int) -> int:
    """The prefix vLLM reuses: whole blocks, never the prompt's last token (vLLM recomputes it)."""
    return min(blocks * block_size, max(prompt_tokens - 1, 0) // block_size * block_size)


@dataclass
class _Block:
    content: int  # the router's hash
    copies: int = 1  # vLLM may cache the same content in several blocks at once


@dataclass
class _Rank:
    """One engine (data-parallel rank) of a replica: its blocks by vLLM hash, per medium, in
    the order they were stored (oldest first)."""

    media: dict[str, dict[EngineHash, _Block]] = field(default_factory=dict)

    def find(self, engine_hash: EngineHash, medium: str) -> _Block | None:
        block = self.media.get(medium, {}).get(engine_hash)
        if block is None:
            for blocks in self.media.values():
                block = blocks.get(engine_hash)
                if block is not None:
                    break
        return block


@dataclass
class _Pressure:
    """Blocks removed per second, an exponentially weighted moving average."""

    level: float = 0.0  # removals, decayed
    at: float | None = None

    def add(self, count: int, now: float) -> None:
        self.level = self.value(now) * PRESSURE_WINDOW + count
        self.at = now

    def value(self, now: float) -> float:
        if self.at is None:
            return 0.0
        return self.level * math.exp(-max(now - self.at, 0.0) / PRESSURE_WINDOW) / PRESSURE_WINDOW


@dataclass
class IndexStats:
    """What applying events did, for metrics: counts since the replica joined."""

    stored: int = 0
    removed: int = 0
    cleared: int = 0
    orphans: int = 0  # stored blocks whose parent was unknown (events missed): not indexed
    unknown_removals: int = 0
    other_groups: int = 0  # events of KV-cache groups other than 0 (hybrid models): ignored
    other_block_size: int = 0  # stored blocks of another size than the replica's first
    forgotten: int = 0  # dropped to stay within capacity


@dataclass
class _Replica:
    bit: int
    capacity: int
    block_size: int | None = None
    ranks: dict[int, _Rank] = field(default_factory=dict)
    held: dict[str, dict[int, int]] = field(default_factory=dict)  # medium -> content -> copies
    pressure: _Pressure = field(default_factory=_Pressure)
    stats: IndexStats = field(default_factory=IndexStats)


class BlockIndex:
    """Every replica's cached blocks, per medium, from their events."""

    def __init__(self, default_capacity: int = DEFAULT_CAPACITY) -> None:
        self.default_capacity = default_capacity
        self._replicas: dict[str, _Replica] = {}
        # medium -> content hash -> bit mask of the replicas holding it
        self._holders: dict[str, dict[int, int]] = {}
        self._free_bits: list[int] = []

    # --- membership
    def set_replicas(self, urls: Iterable[str]) -> None:
        """Index these replicas; a replica no longer listed is forgotten with its blocks."""
        wanted = set(urls)
        for url in [u for u in self._replicas if u not in wanted]:
            self.remove_replica(url)
        for url in wanted:
            self.add_replica(url)

    def add_replica(self, url: str) -> None:
        if url not in self._replicas:
            bit = self._free_bits.pop() if self._free_bits else len(self._replicas)
            self._replicas[url] = _Replica(bit, self.default_capacity)

    def remove_replica(self, url: str) -> None:
        replica = self._replicas.get(url)
        if replica is not None:
            self.clear(url)
            del self._replicas[url]
            self._free_bits.append(replica.bit)

    def set_cache_config(self, url: str, blocks: int, block_size: int | None = None) -> None:
        """The engine's KV capacity in blocks (vLLM's num_gpu_blocks), the bound per rank and
        medium from now on, and its block size if known before any event tells it."""
        replica = self._replicas.get(url)
        if replica is None:
            return
        if block_size and replica.block_size is None:
            replica.block_size = block_size
        if blocks > 0:
            replica.capacity = blocks
            for rank in replica.ranks.values():
                for medium, blocks_of in rank.media.items():
                    self._trim(replica, medium, blocks_of)

    # --- events
    def apply(self, url: str, batch: EventBatch, now: float) -> None:
        """Apply one batch of a replica's events, in order."""
        replica = self._replicas.get(url)
        if replica is None:
            return
        rank = replica.ranks.setdefault(batch.rank or 0, _Rank())
        removed = 0
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._store(replica, rank, event)
            elif isinstance(event, BlockRemoved):
                removed += self._remove(replica, rank, event)
            elif isinstance(event, AllBlocksCleared):
                self._clear_rank(replica, rank)
                replica.stats.cleared += 1
        if removed:
            replica.pressure.add(removed, now)

    def clear(self, url: str, rank: int | None = None) -> None:
        """Forget what a replica (or one of its ranks) holds: it restarted, or events were lost."""
        replica = self._replicas.get(url)
        if replica is None:
            return
        ranks = list(replica.ranks.values()) if rank is None else [replica.ranks.get(rank)]
        for state in ranks:
            if state is not None:
                self._clear_rank(replica, state)

    # --- queries
    def prefix_blocks(self, hashes: Sequence[int], medium: str = MEDIUM_GPU) -> dict[str, int]:
        """For each replica, how many of `hashes` (a prompt's block hashes) it holds from the
        start: one pass over the prompt, whatever the fleet's size."""
        holders = self._holders.get(medium, {})
        depth: dict[int, int] = {}
        alive = (1 << (max((r.bit for r in self._replicas.values()), default=-1) + 1)) - 1
        for i, content in enumerate(hashes):
            mask = holders.get(content, 0)
            ended = alive & ~mask
            if ended:
                for bit in _bits(ended):
                    depth[bit] = i
                alive &= mask
            if not alive:
                break
        for bit in _bits(alive):
            depth[bit] = len(hashes)
        return {url: depth.get(r.bit, 0) for url, r in self._replicas.items()}

    def cached_tokens(self, token_ids: Sequence[int], medium: str = MEDIUM_GPU) -> dict[str, int]:
        """For each replica, the prompt tokens vLLM would find cached there
        (`cached_prefix_tokens`; 0 while its block size is unknown: it has told nothing yet); the
        prompt is hashed once per block size in the fleet."""
        sizes = {r.block_size for r in self._replicas.values() if r.block_size is not None}
        result = dict.fromkeys(self._replicas, 0)
        for size in sorted(sizes):
            depths = self.prefix_blocks(prompt_blocks(token_ids, size), medium)
            for url, blocks in depths.items():
                if self._replicas[url].block_size == size:
                    result[url] = cached_prefix_tokens(blocks, size, len(token_ids))
        return result

    def block_size(self, url: str) -> int | None:
        replica = self._replicas.get(url)
        return None if replica is None else replica.block_size

    def footprint(self, url: str) -> dict[str, int]:
        """Blocks the replica holds now, per medium (each distinct block of each rank)."""
        replica = self._replicas.get(url)
        if replica is None:
            return {}
        totals: dict[str, int] = {}
        for rank in replica.ranks.values():
            for medium, blocks in rank.media.items():
                totals[medium] = totals.get(medium, 0) + len(blocks)
        return totals

    def eviction_pressure(self, url: str, now: float) -> float:
        """Blocks the replica removed per second, averaged over about PRESSURE_WINDOW seconds."""
        replica = self._replicas.get(url)
        return 0.0 if replica is None else replica.pressure.value(now)

    def capacity(self, url: str) -> int | None:
        replica = self._replicas.get(url)
        return None if replica is None else replica.capacity

    def stats(self, url: str) -> IndexStats | None:
        replica = self._replicas.get(url)
        return None if replica is None else replica.stats

    def holds(self, url: str, content: int, medium: str = MEDIUM_GPU) -> bool:
        replica = self._replicas.get(url)
        return replica is not None and replica.held.get(medium, {}).get(content, 0) > 0

    @property
    def replicas(self) -> Mapping[str, object]:
        return self._replicas

    # --- internals
    def _store(self, replica: _Replica, rank: _Rank, event: BlockStored) -> None:
        stats = replica.stats
        count = len(event.block_hashes)
        if event.group != 0:
            stats.other_groups += count
            return
        if replica.block_size is None:
            replica.block_size = event.block_size
        elif event.block_size != replica.block_size:
            stats.other_block_size += count
            return
        if event.parent_block_hash is None:
            parent = ROOT
        else:
            found = rank.find(event.parent_block_hash, event.medium)
            if found is None:
                stats.orphans += count
                return
            parent = found.content
        blocks = rank.media.setdefault(event.medium, {})
        size = event.block_size
        contents = prompt_blocks(event.token_ids, size, parent)
        if event.extra_keys is not None or event.lora is not None:
            contents = _with_extras(contents, event)
        for engine_hash, content in zip(event.block_hashes, contents, strict=True):
            block = blocks.pop(engine_hash, None)
            if block is not None and block.content == content:
                block.copies += 1
            else:
                if block is not None:  # the same vLLM hash for other content: take the new one
                    self._drop(replica, event.medium, block)
                block = _Block(content)
                self._hold(replica, event.medium, content)
            blocks[engine_hash] = block  # most recently stored last
        stats.stored += count
        self._trim(replica, event.medium, blocks)

    def _remove(self, replica: _Replica, rank: _Rank, event: BlockRemoved) -> int:
        if event.group != 0:
            replica.stats.other_groups += len(event.block_hashes)
            return 0
        blocks = rank.media.get(event.medium, {})
        removed = 0
        for engine_hash in event.block_hashes:
            block = blocks.get(engine_hash)
            if block is None:
                replica.stats.unknown_removals += 1
                continue
            removed += 1
            block.copies -= 1
            if block.copies <= 0:
                del blocks[engine_hash]
                self._release(replica, event.medium, block.content)
        replica.stats.removed += removed
        return removed

    def _trim(self, replica: _Replica, medium: str, blocks: dict[EngineHash, _Block]) -> None:
        while len(blocks) > replica.capacity:
            oldest = next(iter(blocks))
            self._drop(replica, medium, blocks.pop(oldest))
            replica.stats.forgotten += 1

    def _clear_rank(self, replica: _Replica, rank: _Rank) -> None:
        for medium, blocks in rank.media.items():
            for block in blocks.values():
                self._drop(replica, medium, block)
        rank.media.clear()

    def _drop(self, replica: _Replica, medium: str, block: _Block) -> None:
        self._release(replica, medium, block.content)  # the entry goes with all its copies

    def _hold(self, replica: _Replica, medium: str, content: int) -> None:
        held = replica.held.setdefault(medium, {})
        held[content] = held.get(content, 0) + 1
        if held[content] == 1:
            holders = self._holders.setdefault(medium, {})
            holders[content] = holders.get(content, 0) | (1 << replica.bit)

    def _release(self, replica: _Replica, medium: str, content: int) -> None:
        held = replica.held.get(medium, {})
        left = held.get(content, 0) - 1
        if left > 0:
            held[content] = left
            return
        held.pop(content, None)
        holders = self._holders.get(medium, {})
        mask = holders.get(content, 0) & ~(1 << replica.bit)
        if mask:
            holders[content] = mask
        else:
            holders.pop(content, None)


def _with_extras(contents: list[int], event: BlockStored) -> list[int]:
    """Blocks whose vLLM hash mixed in more than tokens (LoRA, images, cache salt) get content
    hashes no plain prompt can produce."""
    extras = event.extra_keys or (None,) * len(contents)
    return [
        xxhash.xxh3_64_intdigest(repr((event.lora, extra)).encode(), seed=content)
        for content, extra in zip(contents, extras, strict=False)
    ]


def _bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
