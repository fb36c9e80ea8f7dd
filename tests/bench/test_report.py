"""The benchmark's figures from per-request records (bench/runner/report.py), without a network."""

from __future__ import annotations

from typing import Any

from bench.load.workload import Workload, first_message, followup, session_id
from bench.runner.report import ideal_cached_tokens, max_over_mean, percentile


def record(sid: str, turn: int, started: float, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "session_id": sid,
        "turn": turn,
        "started_at": started,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "status": 200,
        "error": "",
    }


def test_later_turn_can_reuse_previous_prompt_and_answer_in_whole_blocks() -> None:
    records = [record("a", 1, 0.0, 100, 30), record("a", 2, 1.0, 150, 30)]
    # turn 1 is the run's first request: nothing to reuse; turn 2: 130 tokens -> 128
    assert ideal_cached_tokens(records, shared_prefix_tokens=48) == 128


def test_first_turns_after_the_first_reuse_the_shared_system_prefix() -> None:
    records = [record("a", 1, 0.0, 100, 30), record("b", 1, 0.5, 120, 30)]
    assert ideal_cached_tokens(records, shared_prefix_tokens=48) == 48


def test_ideal_never_counts_the_last_prompt_token() -> None:
    # previous prompt + answer covers all 160 tokens, but vLLM recomputes the last one
    records = [record("a", 1, 0.0, 100, 60), record("a", 2, 1.0, 160, 10)]
    assert ideal_cached_tokens(records, shared_prefix_tokens=0) == 144


def test_failed_requests_count_for_nothing() -> None:
    failed = record("a", 2, 1.0, 150, 30) | {"status": 502, "error": "HTTP 502"}
    assert ideal_cached_tokens([record("a", 1, 0.0, 100, 30), failed], 0) == 0


def test_percentiles_interpolate_and_are_ordered() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    p50, p90, p99 = (percentile(values, q) for q in (50, 90, 99))
    assert p50 is not None and p90 is not None and p99 is not None
    assert p50 <= p90 <= p99
    assert percentile([], 50) is None


def test_max_over_mean_is_one_when_balanced() -> None:
    assert max_over_mean([10, 10, 10, 10]) == 1.0
    assert max_over_mean([20, 10, 10, 0]) == 2.0


def test_same_seed_gives_the_same_conversation_and_users_differ() -> None:
    workload = Workload(seed=7)
    assert first_message(workload, 3, 2) == first_message(Workload(seed=7), 3, 2)
    assert first_message(workload, 3, 2) != first_message(workload, 4, 2)
    assert followup(workload, 3, 2, 2) != followup(workload, 3, 2, 3)
    assert session_id(workload, 3, 2) != session_id(workload, 2, 3)
