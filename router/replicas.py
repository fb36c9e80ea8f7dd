"""Replica membership, health, ejection and in-flight counts: what the policies route over.

`ReplicaSet` is the state (no I/O; time passed in). `HealthChecker` and `DnsDiscovery` are the
background loops that feed it. Membership changes rebuild the policy's ring once, never per
request; health changes only add or remove a replica from the load table the policies see.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp

from router import metrics
from router.config import ReplicaSpec
from router.core.policies import Policy
from router.core.ring import LoadTable

log = logging.getLogger("router.replicas")

OUTLIER_EWMA = 0.2  # weight of the newest TTFT in a replica's moving average
OUTLIER_MIN_SAMPLES = 10  # no verdict on a replica before this many first tokens


@dataclass
class Replica:
    url: str
    weight: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict)
    inflight: int = 0
    healthy: bool = True
    failures: int = 0  # consecutive
    ejections: int = 0  # since the last success: doubles the next ejection
    ejected_until: float = 0.0
    scraped_load: float = 0.0  # running + waiting, from the replica's /metrics
    last_error: str = ""
    seen_healthy: bool = False  # a replica never seen healthy is out at its first failure
    ttft_average: float | None = None  # moving average of time to first token, seconds
    ttft_samples: int = 0


class ReplicaSet:
    """The replicas, their health and load, and the policy that routes over them."""

    def __init__(
        self,
        policy: Policy,
        load_signal: str = "local",
        eject_after: int = 3,
        eject_backoff: float = 2.0,
        eject_backoff_max: float = 60.0,
        outlier_ttft_factor: float = 0.0,
        outlier_min_ttft: float = 2.0,
    ) -> None:
        self.policy = policy
        self.outlier_ttft_factor = outlier_ttft_factor
        self.outlier_min_ttft = outlier_min_ttft
        self._median_ttft = 0.0
        self._median_at = float("-inf")
        self.load_signal = load_signal
        self.eject_after = eject_after
        self.eject_backoff = eject_backoff
        self.eject_backoff_max = eject_backoff_max
        self.replicas: dict[str, Replica] = {}
        self.loads = LoadTable()  # healthy replicas only
        self.on_change: list[Callable[[], None]] = []

    # --- membership
    def set_members(self, specs: Iterable[ReplicaSpec]) -> bool:
        """Replace the member list; returns whether anything changed."""
        wanted = {spec.url: spec for spec in specs}
        changed = False
        for url in list(self.replicas):
            if url not in wanted:
                del self.replicas[url]
                self.loads.remove(url)
                metrics.forget_replica(url)
                changed = True
        for url, spec in wanted.items():
            current = self.replicas.get(url)
            if current is None:
                self.replicas[url] = Replica(url, spec.weight, dict(spec.headers))
                self._admit(self.replicas[url])
                changed = True
            elif current.weight != spec.weight or dict(current.headers) != dict(spec.headers):
                current.weight, current.headers = spec.weight, dict(spec.headers)
                changed = True
        if changed:
            self.policy.set_replicas({url: r.weight for url, r in self.replicas.items()})
            for callback in self.on_change:
                callback()
        return changed

    def get(self, url: str) -> Replica | None:
        return self.replicas.get(url)

    def healthy_count(self) -> int:
        return len(self.loads)

    # --- load
    def _load_of(self, replica: Replica) -> float:
        if self.load_signal == "scraped":
            return replica.scraped_load
        if self.load_signal == "both":
            return max(float(replica.inflight), replica.scraped_load)
        return float(replica.inflight)

    def acquire(self, url: str) -> None:
        replica = self.replicas.get(url)
        if replica is None:
            return
        replica.inflight += 1
        metrics.INFLIGHT.labels(url).inc()
        if replica.healthy and self.load_signal != "scraped":
            self.loads.set(url, self._load_of(replica))

    def release(self, url: str, acquired: Replica | None = None) -> None:
        """End one in-flight request; `acquired` is the Replica it started on, if known."""
        replica = self.replicas.get(url)
        if acquired is not None and replica is not acquired:
            # The replica left (and maybe came back as a new member) meanwhile: the request
            # counted on the departed object, not on whatever holds the URL now.
            acquired.inflight -= 1
            return
        if replica is None:
            return
        replica.inflight -= 1
        metrics.INFLIGHT.labels(url).dec()
        if replica.healthy and self.load_signal != "scraped":
            self.loads.set(url, self._load_of(replica))

    def set_scraped_load(self, url: str, running: float, waiting: float) -> None:
        replica = self.replicas.get(url)
        if replica is None:
            return
        replica.scraped_load = running + waiting
        if replica.healthy and self.load_signal != "local":
            self.loads.set(url, self._load_of(replica))

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
            self.eject(replica, now)

    def record_ttft(self, url: str, seconds: float, now: float) -> None:
        """Outlier detection: a replica far slower than the fleet's median is ejected."""
        replica = self.replicas.get(url)
        if replica is None or not self.outlier_ttft_factor:
            return
        previous = replica.ttft_average
        replica.ttft_average = (
            seconds if previous is None else previous + OUTLIER_EWMA * (seconds - previous)
        )
        replica.ttft_samples += 1
        if (
            replica.ttft_samples < OUTLIER_MIN_SAMPLES
            or replica.ttft_average < self.outlier_min_ttft
        ):
            return
        if now - self._median_at > 1.0:  # the median moves slowly: recompute once a second
            averages = sorted(
                r.ttft_average
                for r in self.replicas.values()
                if r.healthy
                and r.ttft_average is not None
                and r.ttft_samples >= OUTLIER_MIN_SAMPLES
            )
            self._median_ttft = averages[len(averages) // 2] if len(averages) >= 3 else 0.0
            self._median_at = now
        if (
            self._median_ttft
            and replica.ttft_average > self.outlier_ttft_factor * self._median_ttft
        ):
            replica.last_error = (
                f"slow: time to first token {replica.ttft_average:.2f}s, fleet median "
                f"{self._median_ttft:.2f}s"
            )
            if replica.healthy:
                self.eject(replica, now)

    def eject(self, replica: Replica, now: float) -> None:
        backoff = min(self.eject_backoff * 2**replica.ejections, self.eject_backoff_max)
        replica.ejections += 1
        replica.ejected_until = now + backoff
        replica.healthy = False
        self.loads.remove(replica.url)
        metrics.HEALTHY.labels(replica.url).set(0)
        log.warning(
            "replica %s ejected for %.1fs after %d failures (%s)",
            replica.url, backoff, replica.failures, replica.last_error,
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
        replica.ttft_average, replica.ttft_samples = None, 0  # a fresh start after ejection
        self.loads.set(replica.url, self._load_of(replica))
        metrics.HEALTHY.labels(replica.url).set(1)
        metrics.INFLIGHT.labels(replica.url).set(replica.inflight)

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "url": r.url,
                "healthy": r.healthy,
                "weight": r.weight,
                "inflight": r.inflight,
                "load": self.loads.get(r.url),
                "scraped_load": r.scraped_load,
                "consecutive_failures": r.failures,
                "ejected_for_s": round(max(r.ejected_until - time.monotonic(), 0.0), 3)
                if not r.healthy
                else 0.0,
                "last_error": r.last_error,
                "ttft_average_s": None if r.ttft_average is None else round(r.ttft_average, 4),
            }
            for r in self.replicas.values()
        ]


class HealthChecker:
    """GET /health on every replica each interval; ejected replicas once their backoff is over."""

    def __init__(
        self,
        replicas: ReplicaSet,
        session: aiohttp.ClientSession,
        interval: float,
        timeout: float,
    ) -> None:
        self.replicas = replicas
        self.session = session
        self.interval = interval
        self.timeout = aiohttp.ClientTimeout(total=timeout)

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


class DnsDiscovery:
    """Re-resolves HOST:PORT (a headless Service) and sets the members to its addresses."""

    def __init__(
        self, replicas: ReplicaSet, target: str, scheme: str = "http", interval: float = 10.0
    ) -> None:
        host, _, port = target.rpartition(":")
        self.replicas = replicas
        self.host = host.strip("[]")
        self.port = int(port)
        self.scheme = scheme
        self.interval = interval

    async def resolve(self) -> list[ReplicaSpec]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = sorted({str(info[4][0]) for info in infos})
        return [ReplicaSpec(f"{self.scheme}://{_host(a)}:{self.port}") for a in addresses]

    async def refresh(self) -> None:
        try:
            specs = await self.resolve()
        except OSError as error:
            # Keep the last known members: a DNS hiccup must not empty the fleet.
            log.warning("resolving %s failed: %s", self.host, error)
            return
        if specs and self.replicas.set_members(specs):
            log.info("replicas from DNS %s: %s", self.host, [s.url for s in specs])

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()


def _host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
