"""Every setting of a mock replica in one place, with its default."""

from __future__ import annotations

from dataclasses import dataclass

from .profiles import TimingProfile, get_profile
from .scheduler import SchedulerLimits


@dataclass
class MockOptions:
    """Settings of one mock replica; None means "take the profile's value"."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    profile: str = "llama-3-8b-h100"
    speed: float = 1.0
    kv_blocks: int | None = None
    block_size: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    seed: int = 0
    min_answer_tokens: int = 16
    max_answer_tokens: int = 512
    kv_events_config: str | None = None  # vLLM's --kv-events-config JSON (kv_events.py)

    def timing_profile(self) -> TimingProfile:
        """The named profile (ValueError if unknown)."""
        return get_profile(self.profile)

    def limits(self) -> SchedulerLimits:
        """Engine limits: explicit options over the profile's values."""
        p = self.timing_profile()
        return SchedulerLimits(
            kv_blocks=self.kv_blocks if self.kv_blocks is not None else p.kv_blocks,
            block_size=self.block_size if self.block_size is not None else p.block_size,
            max_num_seqs=self.max_num_seqs if self.max_num_seqs is not None else p.max_num_seqs,
            max_num_batched_tokens=(
                self.max_num_batched_tokens
                if self.max_num_batched_tokens is not None
                else p.max_num_batched_tokens
            ),
        )

    def model_len(self) -> int:
        """Longest prompt plus answer a request may ask for."""
        if self.max_model_len is not None:
            return self.max_model_len
        return self.timing_profile().max_model_len
