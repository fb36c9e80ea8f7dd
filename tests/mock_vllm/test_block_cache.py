"""The mock's prefix cache, as pure bookkeeping: chained hashes, ref counts, LRU eviction."""

from __future__ import annotations

import pytest

from bench.mock_vllm.block_cache import BlockCache, block_hashes


def test_block_hashes_cover_full_blocks_and_chain_on_the_parent() -> None:
    a = block_hashes(list(range(40)), 16)
    b = block_hashes([99, *range(1, 40)], 16)
    assert len(a) == 2  # the last 8 tokens are a partial block
    assert a[0] != b[0] and a[1] != b[1]  # same second block, different parent


def _fill(cache: BlockCache, hashes: list[int]) -> list[int]:
    blocks = cache.allocate(len(hashes))
    for block, h in zip(blocks, hashes, strict=True):
        cache.register(block, h)
    return blocks


def test_released_blocks_stay_cached_until_capacity_pressure() -> None:
    cache = BlockCache(4)
    blocks = _fill(cache, [1, 2])
    cache.release(blocks)
    assert cache.longest_prefix([1, 2]) == blocks
    assert cache.usage == 0.0
    cache.allocate(2)  # the two never-used blocks go first
    assert cache.evictions == 0 and cache.longest_prefix([1, 2]) == blocks


def test_eviction_takes_least_recently_freed_first() -> None:
    cache = BlockCache(4)
    old = _fill(cache, [10])
    new = _fill(cache, [20])
    cache.release(old)
    cache.release(new)
    cache.allocate(2)  # empty blocks
    cache.allocate(1)  # evicts the older prefix
    assert not cache.is_cached(10) and cache.is_cached(20)
    cache.allocate(1)
    assert not cache.is_cached(20) and cache.evictions == 2


def test_a_prefix_tail_is_evicted_before_its_head() -> None:
    cache = BlockCache(3)
    blocks = _fill(cache, [1, 2, 3])
    cache.release(blocks)
    cache.allocate(1)
    assert cache.longest_prefix([1, 2, 3]) == blocks[:2]


def test_held_blocks_are_never_evicted() -> None:
    cache = BlockCache(2)
    held = _fill(cache, [1])
    other = _fill(cache, [2])
    cache.release(other)
    cache.acquire(cache.longest_prefix([2]))  # a second request shares block 2
    assert cache.num_free == 0
    with pytest.raises(MemoryError):
        cache.allocate(1)
    assert cache.is_cached(1) and cache.is_cached(2) and held


def test_reset_drops_only_unheld_cached_blocks() -> None:
    cache = BlockCache(4)
    held = _fill(cache, [1])
    cache.release(_fill(cache, [2]))
    assert len(cache.reset()) == 1
    assert cache.is_cached(1) and not cache.is_cached(2)
    cache.release(held)
