"""Replica membership and health: who is in the fleet, and who takes traffic now.

`ReplicaSet` is the state (no I/O, no clock: time is passed in); `HealthChecker` is the loop that
probes it. Membership changes reach the ring and the load accounting through `on_members`, health
changes through `on_health`, once per change, never per request (docs/design.md, "Failures").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp

from router import metrics
from router.config import Config, ReplicaSpec

log = logging.getLogger("router.replicas")


@dataclass
class Replica:
    url: str
    weight: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict)
    healthy: bool = True
    failures: int = 0  # consecutive
    ejections: int = 0  # since the last success: doubles the next ejection
    ejected_until: float = 0.0
    last_error: str = ""
    seen_healthy: bool = False  # a replica never seen healthy is out at its first failure
    spec: ReplicaSpec | None = None  # as configured or discovered (its KV-event endpoints)


class ReplicaSet:
    """The members, their health and ejections."""

    def __init__(self, config: Config) -> None:
        self.eject_after = config.eject_after
        self.eject_backoff = config.eject_backoff
        self.eject_backoff_max = config.eject_backoff_max
        self.replicas: dict[str, Replica] = {}
        self.on_members: list[Callable[[Mapping[str, float]], None]] = []
        self.on_health: list[Callable[[str, bool], None]] = []

    # --- membership
    def set_members(self, specs: Iterable[ReplicaSpec]) -> bool:
        """Replace the member list; returns whether anything changed."""
        wanted = {spec.url: spec for spec in specs}
        changed = False
        joined: list[Replica] = []
        for url in list(self.replicas):
            if url not in wanted:
                del self.replicas[url]
                metrics.forget_replica(url)
                changed = True
        for url, spec in wanted.items():
            current = self.replicas.get(url)
            if current is None:
                self.replicas[url] = Replica(url, spec.weight, dict(spec.headers), spec=spec)
                joined.append(self.replicas[url])
                changed = True
            elif current.spec != spec:
                current.weight, current.headers = spec.weight, dict(spec.headers)
                current.spec = spec
                changed = True
        if changed:
            weights = {url: r.weight for url, r in self.replicas.items()}
            for members_changed in self.on_members:
                members_changed(weights)
        for replica in joined:
            self._admit(replica)
        return changed

    def get(self, url: str) -> Replica | None:
        return self.replicas.get(url)

    def healthy_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.healthy)

    # --- health
    def record_success(self, url: str) -> None:
        replica = self.replicas.get(url)
        if replica is not None:
            replica.failures = 0
            replica.ejections = 0
            replica.seen_healthy = True

    def record_failure(self, url: str, now: float, reason: str) -> None:
        """A failed request or health check; `eject_after` in a row take the replica out."""
        replica = self.replicas.get(url)
        if replica is None:
            return
        replica.failures += 1
        replica.last_error = reason
        threshold = self.eject_after if replica.seen_healthy else 1
        if replica.healthy and replica.failures >= threshold:
            self.eject(url, now)

    def eject(self, url: str, now: float, reason: str = "") -> None:
        replica = self.replicas.get(url)
        if replica is None or not replica.healthy:
            return
        if reason:
            replica.last_error = reason
        backoff = min(self.eject_backoff * 2**replica.ejections, self.eject_backoff_max)
        replica.ejections += 1
        replica.ejected_until = now + backoff
        replica.healthy = False
        metrics.HEALTHY.labels(url).set(0)
        for health_changed in self.on_health:
            health_changed(url, False)
        log.warning(
            "replica %s ejected for %.1fs after %d failures (%s)",
            url, backoff, replica.failures, replica.last_error,
        )  # fmt: skip

    def due_for_probe(self, replica: Replica, now: float) -> bool:
        return replica.healthy or now >= replica.ejected_until

    def record_probe(self, url: str, ok: bool, now: float, reason: str = "") -> None:
        replica = self.replicas.get(url)
        if replica is None:
            return
        if ok:
            replica.failures = 0
            replica.seen_healthy = True
            if not replica.healthy:
                log.warning("replica %s healthy again", url)
                self._admit(replica)
        else:
            self.record_failure(url, now, reason or "health check failed")

    def _admit(self, replica: Replica) -> None:
        replica.healthy = True
        metrics.HEALTHY.labels(replica.url).set(1)
        for health_changed in self.on_health:
            health_changed(replica.url, True)

    def status(self, now: float) -> list[dict[str, object]]:
        return [
            {
                "url": r.url,
                "healthy": r.healthy,
                "weight": r.weight,
                "consecutive_failures": r.failures,
                "ejected_for_s": 0.0 if r.healthy else round(max(r.ejected_until - now, 0.0), 3),
                "last_error": r.last_error,
            }
            for r in self.replicas.values()
        ]


class HealthChecker:
    """GET /health on every replica each interval; ejected replicas once their backoff is over."""

    def __init__(
        self, replicas: ReplicaSet, session: aiohttp.ClientSession, config: Config
    ) -> None:
        self.replicas = replicas
        self.session = session
        self.interval = config.health_interval
        self.timeout = aiohttp.ClientTimeout(total=config.health_timeout)

    async def check_all(self) -> None:
        now = time.monotonic()
        due = [r for r in self.replicas.replicas.values() if self.replicas.due_for_probe(r, now)]
        await asyncio.gather(*(self.check(r.url) for r in due))

    async def check(self, url: str) -> None:
        try:
            async with self.session.get(url + "/health", timeout=self.timeout) as response:
                await response.read()
                ok, reason = response.status == 200, f"health status {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            ok, reason = False, f"health {type(error).__name__}"
        self.replicas.record_probe(url, ok, time.monotonic(), reason)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):  # one bad round must not end the loop
                await self.check_all()
