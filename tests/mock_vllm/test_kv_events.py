"""The mock's KV-cache events describe its block cache exactly: replayed into the router's
index (through vLLM's wire format), they give the cache's own contents."""

from __future__ import annotations

import random

import msgspec

from bench.mock_vllm.block_cache import block_hashes
from bench.mock_vllm.profiles import get_profile
from bench.mock_vllm.scheduler import Scheduler, SchedulerLimits, Sequence
from router.core.block_index import BlockIndex, prompt_blocks
from router.core.kv_events import decode_payload

URL = "http://mock:8000"
SIZE = 4


def sequence(prompt: list[int], answer: int) -> Sequence:
    return Sequence(prompt, [7] * answer, ["x"] * answer, "stop", arrival=0.0)


def test_events_rebuild_the_block_cache_through_evictions_and_resets() -> None:
    limits = SchedulerLimits(
        kv_blocks=24, block_size=SIZE, max_num_seqs=4, max_num_batched_tokens=64
    )
    scheduler = Scheduler(limits, get_profile("test-fast"), kv_events=True)
    index = BlockIndex()
    index.set_replicas([URL])
    rng = random.Random(3)
    prompts = [[rng.randrange(50) for _ in range(rng.randrange(5, 40))] for _ in range(12)]
    prompts += [[*p, 1, 2, 3, 4, 5] for p in prompts[:4]]  # later turns extending earlier ones
    sequence_number = 0
    for step, prompt in enumerate(prompts * 2):
        scheduler.add(sequence(prompt, rng.randrange(1, 9)))
        while scheduler.has_work:
            plan = scheduler.plan_step()
            scheduler.complete_step(plan, now=0.0)
            payload = msgspec.msgpack.encode([0.0, scheduler.take_kv_events(), 0])
            index.apply(URL, decode_payload(sequence_number, payload), now=0.0)
            sequence_number += 1
        if step == 15:
            scheduler.reset_prefix_cache()
            payload = msgspec.msgpack.encode([0.0, scheduler.take_kv_events(), 0])
            index.apply(URL, decode_payload(sequence_number, payload), now=0.0)
        assert index.footprint(URL).get("GPU", 0) == scheduler.cache.num_cached
        for known in prompts:
            expected = len(scheduler.cache.longest_prefix(_mock_hashes(scheduler, known)))
            assert index.prefix_blocks(prompt_blocks(known, SIZE))[URL] == expected
    assert scheduler.cache.evictions > 0


def _mock_hashes(scheduler: Scheduler, tokens: list[int]) -> list[int]:
    return block_hashes(tokens, scheduler.limits.block_size)
