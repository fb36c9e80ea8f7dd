"""Engine-only checks of the real-vLLM harness: health, streaming usage, prefix cache, reset."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import pytest

from bench.load.timed_stream import StreamResult, sdk_client, stream_chat
from bench.real.vllm_engines import EngineFleet, is_healthy, reset_prefix_cache
from bench.runner.counters import read_counters

pytestmark = pytest.mark.vllm

BLOCK_SIZE = 32


def fresh_text(words: int) -> str:
    """Text no engine has seen before, so none of it is cached."""
    rng = random.Random(uuid.uuid4().int)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ing", "est"]
    return " ".join("".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(words))


def chat(
    fleet: EngineFleet, engine: int, text: str, logit_bias: dict[str, float], max_tokens: int = 8
) -> StreamResult:
    body: dict[str, Any] = {
        "model": fleet.config.name,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logit_bias": logit_bias,
    }
    return stream_chat(sdk_client(fleet.urls[engine]), body)


def prefix_cache_counters(url: str) -> tuple[float, float]:
    counters = read_counters(url)
    return counters.queries, counters.hits


def counters_after(url: str, before: tuple[float, float]) -> tuple[float, float]:
    """The counters once this request's stats have landed (they follow the response closely)."""
    deadline = time.monotonic() + 3.0
    counters = prefix_cache_counters(url)
    while counters[0] == before[0] and time.monotonic() < deadline:
        time.sleep(0.05)
        counters = prefix_cache_counters(url)
    return counters


def test_both_engines_are_healthy_on_their_own_ports(vllm_engines: EngineFleet) -> None:
    assert len(vllm_engines.urls) == 2
    assert len(set(vllm_engines.urls)) == 2
    assert all(is_healthy(url) for url in vllm_engines.urls)
    assert sorted(engine.core for engine in vllm_engines.engines) == [0, 1]


def test_streamed_chat_carries_visible_content_and_cached_token_usage(
    vllm_engines: EngineFleet, logit_bias: dict[str, float]
) -> None:
    for engine in range(2):
        result = chat(vllm_engines, engine, fresh_text(40), logit_bias, max_tokens=8)
        assert result.content.strip()
        assert result.completion_tokens == 8
        assert result.prompt_tokens > 40
        assert "cached_tokens" in result.usage["prompt_tokens_details"]
        assert result.cached_tokens == 0
        assert result.ttft_s > 0


def test_same_long_prompt_twice_hits_the_prefix_cache_in_whole_blocks(
    vllm_engines: EngineFleet, logit_bias: dict[str, float]
) -> None:
    url = vllm_engines.urls[0]
    text = fresh_text(600)

    before = prefix_cache_counters(url)
    first = chat(vllm_engines, 0, text, logit_bias, max_tokens=1)
    middle = counters_after(url, before)
    second = chat(vllm_engines, 0, text, logit_bias, max_tokens=1)
    after = counters_after(url, middle)

    prompt = first.prompt_tokens
    assert prompt > 10 * BLOCK_SIZE
    assert middle[0] - before[0] == prompt
    assert middle[1] - before[1] == 0
    hits = after[1] - middle[1]
    assert after[0] - middle[0] == prompt
    # Whole blocks only, and at least one token is always computed again.
    assert hits % BLOCK_SIZE == 0
    assert 0 < prompt - hits <= BLOCK_SIZE
    assert second.cached_tokens == hits


def test_reset_prefix_cache_forgets_cached_prompts(
    vllm_engines: EngineFleet, logit_bias: dict[str, float]
) -> None:
    text = fresh_text(300)
    chat(vllm_engines, 1, text, logit_bias, max_tokens=1)
    assert chat(vllm_engines, 1, text, logit_bias, max_tokens=1).cached_tokens > 0

    reset_prefix_cache(vllm_engines.urls[1])

    assert chat(vllm_engines, 1, text, logit_bias, max_tokens=1).cached_tokens == 0
