"""The engine: runs the scheduler's steps on the event loop, at the modelled step times.

Deadline based: a step that starts at t ends at t + duration / speed and the next starts at that
deadline, so the loop's own CPU time is absorbed instead of added. The loop only sleeps with
asyncio; it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from .kv_events import EventPublisher
from .metrics import EngineMetrics
from .scheduler import Scheduler, Sequence, StepPlan

# Past this much lateness the engine stops trying to catch up (it would only burst).
MAX_CATCH_UP = 0.1


@dataclass
class EngineStats:
    """How faithfully the loop kept to the model: modelled versus achieved step time."""

    steps: int = 0
    late_steps: int = 0
    modelled_seconds: float = 0.0
    busy_wall_seconds: float = 0.0
    max_lag_seconds: float = 0.0
    tokens_emitted: int = 0


class Request:
    """The handler's view of a sequence: new text to deliver and an event that says so."""

    __slots__ = ("ready", "seq")

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.ready = asyncio.Event()

    def take(self) -> list[str]:
        """Token texts produced since the last call."""
        pieces = self.seq.pending
        self.seq.pending = []
        self.ready.clear()
        return pieces

    @property
    def done(self) -> bool:
        return self.seq.finished or self.seq.aborted


class Engine:
    """One mock vLLM engine: a scheduler, its metrics and the step loop task."""

    def __init__(
        self, scheduler: Scheduler, speed: float = 1.0, metrics: EngineMetrics | None = None
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.scheduler = scheduler
        self.speed = speed
        self.metrics = metrics
        self.publisher: EventPublisher | None = None  # KV-cache events, when configured
        self.stats = EngineStats()
        self._requests: dict[Sequence, Request] = {}
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the step loop as a background task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="mock-engine")

    async def stop(self) -> None:
        """Cancel the step loop and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, seq: Sequence) -> Request:
        """Queue a sequence; ValueError if it can never fit."""
        self.scheduler.add(seq)
        request = Request(seq)
        self._requests[seq] = request
        self._work.set()
        self._update_gauges()
        return request

    def abort(self, request: Request) -> None:
        """Abort a request (client gone): it leaves the queue or batch and frees its blocks."""
        self.scheduler.abort(request.seq)
        self._requests.pop(request.seq, None)
        request.ready.set()
        self._update_gauges()

    def reset_prefix_cache(self) -> int:
        """Drop cached blocks no running request holds."""
        dropped = self.scheduler.reset_prefix_cache()
        self._update_gauges()
        self._publish()
        return dropped

    def _publish(self) -> None:
        events = self.scheduler.take_kv_events()
        if events and self.publisher is not None:
            self.publisher.publish(events)

    async def run(self) -> None:
        """The step loop: plan, sleep until the step's deadline, deliver its tokens."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if not self.scheduler.has_work:
                self._work.clear()
                await self._work.wait()
                deadline = loop.time()
            plan = self.scheduler.plan_step()
            if plan.empty:
                # nothing can run until something else finishes or is aborted
                self._work.clear()
                await self._work.wait()
                deadline = loop.time()
                continue
            started = loop.time()
            modelled = self.scheduler.duration(plan)
            deadline += modelled / self.speed
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.stats.late_steps += 1
                self.stats.max_lag_seconds = max(self.stats.max_lag_seconds, -delay)
                if -delay > MAX_CATCH_UP:
                    deadline = loop.time()
                await asyncio.sleep(0)  # let handlers write what earlier steps produced
            now = loop.time()
            self._finish_step(plan, now)
            self.stats.steps += 1
            self.stats.modelled_seconds += modelled / self.speed
            self.stats.busy_wall_seconds += now - started

    def _finish_step(self, plan: StepPlan, now: float) -> None:
        progressed = self.scheduler.complete_step(plan, now)
        self._publish()  # like vLLM: one batch per engine step, the step's events in order
        self.stats.tokens_emitted += len(progressed)
        for seq in progressed:
            request = self._requests.get(seq)
            if request is None:
                continue
            request.ready.set()
            if seq.finished:
                del self._requests[seq]
        if self.metrics is not None:
            self._record(plan, progressed, now)

    def _record(self, plan: StepPlan, progressed: list[Sequence], now: float) -> None:
        m = self.metrics
        assert m is not None
        if plan.admitted:
            m.prefix_cache_queries.inc(sum(s.prompt_len for s in plan.admitted))
            m.prefix_cache_hits.inc(sum(s.num_cached for s in plan.admitted))
        if progressed:
            m.generation_tokens.inc(len(progressed))
        for seq in progressed:
            if seq.num_generated == 1 and seq.first_token_at is not None:
                m.prompt_tokens.inc(seq.prompt_len)
                m.time_to_first_token.observe(seq.first_token_at - seq.arrival)
        self._update_gauges()

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        self.metrics.requests_running.set(len(self.scheduler.running))
        self.metrics.requests_waiting.set(len(self.scheduler.waiting))
        self.metrics.kv_cache_usage.set(self.scheduler.cache.usage)


def process_cpu_seconds() -> float:
    """CPU time of this process (user + system), for the load check."""
    return time.process_time()
