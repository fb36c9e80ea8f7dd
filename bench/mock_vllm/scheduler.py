"""Continuous-batching scheduler with chunked prefill: what each engine step computes.

Pure and clock-free (times are passed in), so the same code drives the live engine and the
virtual-clock TTFT table. Each step decodes one token for every sequence past its prefill and
prefills uncached prompt tokens of running, then waiting, sequences up to the token budget.
A waiting sequence is admitted, first come first served, only when all the blocks its prompt
and answer will need can be allocated (the mock admits instead of preempting).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_cache import BlockCache, block_hashes
from .profiles import TimingProfile


@dataclass(eq=False)
class Sequence:
    """One request inside the engine: its tokens, its blocks and the text not yet delivered."""

    prompt_ids: list[int]
    output_ids: list[int]
    output_pieces: list[str]
    finish_reason: str
    arrival: float
    hashes: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0
    num_generated: int = 0
    num_registered: int = 0
    first_token_at: float | None = None
    finished: bool = False
    aborted: bool = False
    pending: list[str] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def total_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class StepPlan:
    """What one step computes, and what it costs."""

    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_pairs: float = 0.0
    context_tokens: int = 0

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode


@dataclass(frozen=True)
class SchedulerLimits:
    """The engine's size: KV blocks, tokens per block, running sequences, prefill budget."""

    kv_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int


class Scheduler:
    """Queues, running batch and prefix cache of one engine."""

    def __init__(
        self, limits: SchedulerLimits, profile: TimingProfile, kv_events: bool = False
    ) -> None:
        self.limits = limits
        self.profile = profile
        self.cache = BlockCache(limits.kv_blocks, record_evictions=kv_events)
        # vLLM's KV-cache events since the last `take_kv_events`, as vLLM's map-shaped events
        # (None: not recorded).
        self.kv_events: list[dict[str, object]] | None = [] if kv_events else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def blocks_needed(self, seq: Sequence) -> int:
        """Blocks a sequence holds while it runs: its prompt and its whole answer."""
        return -(-seq.total_len // self.limits.block_size)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; ValueError if it could never fit in the KV cache."""
        if self.blocks_needed(seq) > self.limits.kv_blocks:
            raise ValueError(
                f"prompt plus answer needs {seq.total_len} tokens of KV cache, "
                f"more than the {self.limits.kv_blocks * self.limits.block_size} available"
            )
        seq.hashes = block_hashes(seq.prompt_ids + seq.output_ids, self.limits.block_size)
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is and free its blocks."""
        if seq.finished or seq.aborted:
            return
        seq.aborted = True
        if seq in self.running:
            self.running.remove(seq)
            self.cache.release(seq.blocks)
            seq.blocks = []
        else:
            self.waiting.remove(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def plan_step(self) -> StepPlan:
        """Choose this step's decodes and prefill chunks, admitting waiting sequences."""
        plan = StepPlan()
        budget = self.limits.max_num_batched_tokens
        for seq in self.running:
            if not seq.in_prefill:
                plan.decode.append(seq)
                plan.context_tokens += seq.prompt_len + seq.num_generated
            elif budget > 0:
                budget -= self._take_prefill(plan, seq, budget)
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            if not self._admit(seq):
                break  # first come, first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.running.append(seq)
            plan.admitted.append(seq)
            budget -= self._take_prefill(plan, seq, budget)
        return plan

    def duration(self, plan: StepPlan) -> float:
        """Modelled wall time of a step, in seconds at speed 1."""
        p = self.profile
        return (
            p.step_base
            + p.per_prefill_token * plan.prefill_tokens
            + p.per_prefill_pair * plan.prefill_pairs
            + p.per_decode_seq * len(plan.decode)
            + p.per_context_token * plan.context_tokens
        )

    def complete_step(self, plan: StepPlan, now: float) -> list[Sequence]:
        """Apply a finished step at time `now`; returns the sequences with new output."""
        progressed: list[Sequence] = []
        for seq, tokens in plan.prefill:
            if seq.aborted:
                continue
            seq.num_computed += tokens
            if not seq.in_prefill:
                seq.first_token_at = now
                self._emit(seq)
                progressed.append(seq)
            else:
                self._register_full_blocks(seq)
        for seq in plan.decode:
            if not seq.aborted:
                self._emit(seq)
                progressed.append(seq)
        return progressed

    def reset_prefix_cache(self) -> int:
        """Drop cached blocks no running sequence holds."""
        dropped = self.cache.reset()
        if self.kv_events is not None and dropped:
            self._flush_evictions()
            if self.cache.num_cached == 0:
                self.kv_events.append({"type": "AllBlocksCleared"})
            else:  # running requests keep theirs: say exactly which went
                self.kv_events.append(_removed(dropped))
        return len(dropped)

    def take_kv_events(self) -> list[dict[str, object]]:
        """The KV-cache events since the last call, in order (empty unless recording)."""
        if self.kv_events is None:
            return []
        self._flush_evictions()
        events, self.kv_events = self.kv_events, []
        return events

    def _flush_evictions(self) -> None:
        evicted = self.cache.take_evicted()
        if evicted and self.kv_events is not None:
            self.kv_events.append(_removed(evicted))

    def _take_prefill(self, plan: StepPlan, seq: Sequence, budget: int) -> int:
        start = seq.num_computed
        tokens = min(seq.prompt_len - start, budget)
        plan.prefill.append((seq, tokens))
        plan.prefill_tokens += tokens
        # each prefilled token attends to every token before it (causal attention)
        plan.prefill_pairs += tokens * (2 * start + tokens + 1) / 2
        return tokens

    def _admit(self, seq: Sequence) -> bool:
        bs = self.limits.block_size
        # vLLM recomputes at least the last prompt token, so a hit stops one token short
        hit = self.cache.longest_prefix(seq.hashes[: (seq.prompt_len - 1) // bs])
        fresh = self.blocks_needed(seq) - len(hit)
        if fresh > self.cache.num_free - self.cache.num_unheld(hit):
            return False
        self.cache.acquire(hit)
        seq.blocks = hit + self.cache.allocate(fresh)
        seq.num_cached = seq.num_computed = len(hit) * bs
        seq.num_registered = len(hit)
        return True

    def _emit(self, seq: Sequence) -> None:
        seq.pending.append(seq.output_pieces[seq.num_generated])
        seq.num_generated += 1
        self._register_full_blocks(seq)
        if seq.num_generated == len(seq.output_ids):
            seq.finished = True
            self.running.remove(seq)
            self.cache.release(seq.blocks)
            seq.blocks = []

    def _register_full_blocks(self, seq: Sequence) -> None:
        known = seq.num_computed + seq.num_generated
        full = min(known // self.limits.block_size, len(seq.hashes))
        stored: list[int] = []  # a run of newly cached blocks, for one BlockStored event
        for i in range(seq.num_registered, full):
            if self.cache.register(seq.blocks[i], seq.hashes[i]):
                stored.append(i)
            elif stored:
                self._stored(seq, stored)
                stored = []
        if stored:
            self._stored(seq, stored)
        seq.num_registered = max(seq.num_registered, full)

    def _stored(self, seq: Sequence, blocks: list[int]) -> None:
        if self.kv_events is None:
            return
        self._flush_evictions()  # evictions made room for these blocks: they come first
        size = self.limits.block_size
        first, last = blocks[0], blocks[-1] + 1
        tokens = (seq.prompt_ids + seq.output_ids)[first * size : last * size]
        self.kv_events.append(
            {
                "type": "BlockStored",
                "block_hashes": seq.hashes[first:last],
                "parent_block_hash": seq.hashes[first - 1] if first else None,
                "token_ids": tokens,
                "block_size": size,
                "lora_id": None,
                "medium": "GPU",
                "lora_name": None,
            }
        )


def _removed(hashes: list[int]) -> dict[str, object]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU"}
