"""The timing model: predicted TTFT grows with uncached prompt length and drops when cached."""

from __future__ import annotations

import pytest

from bench.mock_vllm import MockOptions
from bench.mock_vllm.profiles import get_profile
from bench.mock_vllm.ttft_table import ttft_rows


def test_h100_profile_predicts_public_scale_ttft() -> None:
    rows = {n: (cold, cached) for n, cold, cached in ttft_rows("llama-3-8b-h100")}
    assert 0.02 < rows[1024][0] < 0.06  # ~30k prefill tokens/s plus one step
    assert 0.2 < rows[8192][0] < 0.4
    assert 1.0 < rows[32768][0] < 2.0  # attention makes long prompts super-linear
    assert all(cached < 0.01 for _, cached in rows.values())


def test_h100_profile_kv_capacity_matches_llama_gqa_shape() -> None:
    blocks = get_profile("llama-3-8b-h100").kv_blocks
    assert 27_000 < blocks < 28_500  # ~54 GiB of 2 MiB blocks


def test_explicit_options_override_profile_values() -> None:
    limits = MockOptions(profile="test-fast", kv_blocks=7, max_num_seqs=3).limits()
    assert (limits.kv_blocks, limits.max_num_seqs, limits.block_size) == (7, 3, 16)
    with pytest.raises(ValueError, match="unknown profile"):
        MockOptions(profile="cpu-tiny").limits()
