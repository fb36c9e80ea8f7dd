"""The prefix cache: fixed-size KV blocks, chained block hashes, ref counts and LRU eviction.

Pure bookkeeping, no I/O and no clock, shaped like vLLM V1's block pool: a block holds
`block_size` tokens; a full block is cached under a hash chained on its parent's hash, so one
hash identifies a whole prefix; blocks that no running request holds stay cached on a free
queue, least recently used first, and are evicted only when a new block is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import xxhash

ROOT_HASH = 0


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (a partial last block has none)."""
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        chunk = token_ids[start : start + block_size]
        data = parent.to_bytes(8, "little") + b"".join(t.to_bytes(4, "little") for t in chunk)
        parent = xxhash.xxh3_64_intdigest(data)
        hashes.append(parent)
    return hashes


class BlockCache:
    """`capacity` KV blocks; cached full blocks found by chained hash, evicted LRU."""

    def __init__(self, capacity: int, record_evictions: bool = False) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 block")
        self.capacity = capacity
        self.evictions = 0
        # Hashes evicted since the last `take_evicted`, for KV-cache events (None: not recorded).
        self._evicted: list[int] | None = [] if record_evictions else None
        self._refs = [0] * capacity
        self._hash_of: list[int | None] = [None] * capacity
        self._block_of: dict[int, int] = {}
        # Blocks no request holds, eviction order first: never-used, then least recently freed.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(capacity))

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free, whether or not they hold a cached prefix)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - len(self._free) / self.capacity

    @property
    def num_cached(self) -> int:
        """Blocks registered under a hash, held or not."""
        return len(self._block_of)

    def is_cached(self, block_hash: int) -> bool:
        """Whether a block with this hash is in the cache."""
        return block_hash in self._block_of

    def longest_prefix(self, hashes: Sequence[int]) -> list[int]:
        """Blocks holding the longest run of `hashes` from the start (nothing is touched)."""
        found: list[int] = []
        for h in hashes:
            block = self._block_of.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def num_unheld(self, blocks: Sequence[int]) -> int:
        """How many of `blocks` sit on the free queue (acquiring them uses up free blocks)."""
        return sum(1 for block in blocks if self._refs[block] == 0)

    def acquire(self, blocks: Sequence[int]) -> None:
        """Hold cached blocks for a request: they leave the free queue while held."""
        for block in blocks:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1

    def allocate(self, count: int) -> list[int]:
        """Take `count` fresh blocks, evicting the least recently used cached ones."""
        if count > len(self._free):
            raise MemoryError(f"need {count} blocks, {len(self._free)} free")
        blocks = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            old = self._hash_of[block]
            if old is not None:
                del self._block_of[old]
                self._hash_of[block] = None
                self.evictions += 1
                if self._evicted is not None:
                    self._evicted.append(old)
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def register(self, block: int, block_hash: int) -> bool:
        """Record that a held block is now full and holds the prefix named by `block_hash`;
        False when that prefix was already cached (in another block: that one is kept)."""
        if block_hash in self._block_of or self._hash_of[block] is not None:
            return False
        self._hash_of[block] = block_hash
        self._block_of[block_hash] = block
        return True

    def take_evicted(self) -> list[int]:
        """Hashes evicted since the last call (empty unless recording)."""
        evicted, self._evicted = self._evicted or [], [] if self._evicted is not None else None
        return evicted

    def release(self, blocks: Sequence[int]) -> None:
        """Drop a request's hold; blocks nobody holds go to the free queue.

        Released last block first, like vLLM, so a prefix's tail is evicted before its head.
        """
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if self._hash_of[block] is None:
                    self._free[block] = None
                    self._free.move_to_end(block, last=False)  # empty blocks go first
                else:
                    self._free[block] = None

    def reset(self) -> list[int]:
        """Forget every cached block that no request holds; returns their hashes."""
        dropped = []
        for block in self._free:
            old = self._hash_of[block]
            if old is not None:
                del self._block_of[old]
                self._hash_of[block] = None
                dropped.append(old)
        return dropped
