"""The benchmark's sizes: every preset in one place, and the command line's overrides of one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from bench.load.workload import Workload


@dataclass(frozen=True)
class Size:
    """Defaults of one benchmark size; explicit flags override each."""

    mocks: int
    kv_blocks: int
    speed: float
    users: int
    spawn_rate: float
    duration: float
    workload: Workload


# Full size: 96 users on 4 H100-profile mocks. A session grows to ~230 blocks of 16 tokens; each
# mock holds 7,000: its share of the ~96 live sessions (24, ~5,500 blocks) plus a few finished
# ones, but not all of them (~22,000), so a policy that scatters sessions loses its prefixes.
FULL = Size(
    mocks=4, kv_blocks=7000, speed=1.0, users=96, spawn_rate=16, duration=60, workload=Workload()
)
QUICK = Size(
    mocks=2,
    kv_blocks=600,
    speed=1.0,
    users=8,
    spawn_rate=8,
    duration=10,
    workload=Workload(
        system_words=200,
        context_words=800,
        followup_words=20,
        answer_tokens=32,
        turns=4,
        think_time=0.2,
    ),
)
# The hard case for placement: two replicas whose caches hold their fair share of the live
# conversations and little more, and a quarter of the sessions "hot" (a document three times
# longer, turns three times faster). 32 users keep ~125,000 tokens live (~7,800 blocks); each
# mock holds 4,500 blocks: 0.58 of it, so a placement that is off balance by a few hot sessions
# overflows one cache.
SKEWED = Size(
    mocks=2,
    kv_blocks=4500,
    speed=1.0,
    users=32,
    spawn_rate=16,
    duration=60,
    workload=Workload(turns=6, hot_share=0.25, hot_context_factor=3.0, hot_pace_factor=3.0),
)
# The same, but as agents that send no session id and open every session with the same fixed
# instruction: every session has the same prompt anchor, the key a router falls back to.
NO_HEADER = replace(SKEWED, workload=replace(SKEWED.workload, turns=7, shared_opening=True))
# Two real vLLM CPU engines (bench/real/real_cpu.py), sized for their 2048-token context: turn 5
# reaches ~1,100 tokens. The engines report their own KV capacity.
REAL_CPU = Size(
    mocks=2,
    kv_blocks=0,
    speed=1.0,
    users=6,
    spawn_rate=6,
    duration=60,
    workload=Workload(
        system_words=40,
        context_words=150,
        followup_words=8,
        answer_tokens=24,
        turns=5,
        think_time=0.5,
    ),
)
# The skewed scenario on two real CPU engines: a quarter of the sessions hot (their document 3x
# longer, 3x faster turns), hot turn 6 reaching ~1,600 of the 2,048-token context. 12 users offer
# ~2.5 requests/s, about half of what two engines on this machine's two cores serve. The engines'
# KV cache is sized to a share of the workload's live tokens (bench/real/real_cpu.py).
REAL_CPU_SKEWED = Size(
    mocks=2,
    kv_blocks=0,
    speed=1.0,
    users=12,
    spawn_rate=6,
    duration=90,
    workload=Workload(
        system_words=40,
        context_words=80,
        followup_words=8,
        answer_tokens=24,
        turns=6,
        think_time=3.0,
        hot_share=0.25,
        hot_context_factor=3.0,
        hot_pace_factor=3.0,
    ),
)
REAL_CPU_NO_HEADER = replace(
    REAL_CPU_SKEWED, workload=replace(REAL_CPU_SKEWED.workload, turns=7, shared_opening=True)
)
WORKLOAD_FLAGS = (
    "system_words",
    "context_words",
    "followup_words",
    "answer_tokens",
    "turns",
    "think_time",
    "hot_share",
    "hot_context_factor",
    "hot_pace_factor",
    "shared_opening",
)


def size_of(args: argparse.Namespace, preset: Size | None = None) -> Size:
    """``preset`` (default: QUICK with --quick, else FULL) with the flags given overriding it."""
    base = preset or (QUICK if args.quick else FULL)
    knobs = {
        name: getattr(args, name) for name in WORKLOAD_FLAGS if getattr(args, name) is not None
    }
    if args.workload_seed is not None:
        knobs["seed"] = args.workload_seed
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Size(
        mocks=pick(args.mock_replicas, base.mocks),
        kv_blocks=pick(args.mock_kv_blocks, base.kv_blocks),
        speed=pick(args.mock_speed, base.speed),
        users=pick(args.users, base.users),
        spawn_rate=pick(args.spawn_rate, base.spawn_rate),
        duration=pick(args.duration, base.duration),
        workload=replace(base.workload, **knobs),
    )
