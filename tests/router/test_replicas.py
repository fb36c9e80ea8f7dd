from __future__ import annotations

from collections.abc import Mapping

from router.config import ReplicaSpec
from router.core.policies import SessionPolicy
from router.replicas import DnsDiscovery, ReplicaSet

URLS = ["http://a:1", "http://b:1", "http://c:1"]


def replica_set(**kwargs: object) -> ReplicaSet:
    replicas = ReplicaSet(SessionPolicy(), **kwargs)  # type: ignore[arg-type]
    replicas.set_members(ReplicaSpec(u) for u in URLS)
    return replicas


def test_consecutive_failures_eject_and_a_good_probe_readmits() -> None:
    replicas = replica_set(eject_after=2, eject_backoff=1.0)
    replicas.record_probe("http://a:1", ok=True, now=0)
    replicas.record_failure("http://a:1", now=0, reason="connect")
    assert "http://a:1" in replicas.loads
    replicas.record_failure("http://a:1", now=0, reason="connect")
    assert "http://a:1" not in replicas.loads
    a = replicas.replicas["http://a:1"]
    assert not replicas.due_for_probe(a, now=0.5)
    assert replicas.due_for_probe(a, now=1.0)
    replicas.record_probe("http://a:1", ok=True, now=1.0)
    assert "http://a:1" in replicas.loads


def test_a_replica_never_seen_healthy_is_out_at_its_first_failure() -> None:
    replicas = replica_set(eject_after=5)
    replicas.record_probe("http://a:1", ok=False, now=0, reason="refused")
    assert "http://a:1" not in replicas.loads


def test_repeated_ejections_back_off_exponentially_up_to_the_maximum() -> None:
    replicas = replica_set(eject_after=1, eject_backoff=1.0, eject_backoff_max=5.0)
    a = replicas.replicas["http://a:1"]
    ends = []
    for now in (0.0, 10.0, 20.0, 30.0, 40.0):
        replicas.record_failure(a.url, now=now, reason="x")
        ends.append(a.ejected_until - now)
        replicas.record_probe(a.url, ok=True, now=now)  # readmitted, but no request succeeded yet
    assert ends == [1.0, 2.0, 4.0, 5.0, 5.0]
    replicas.record_success(a.url)
    replicas.record_failure(a.url, now=50, reason="x")
    assert a.ejected_until - 50 == 1.0


def test_in_flight_counts_feed_the_load_table() -> None:
    replicas = replica_set()
    replicas.acquire("http://a:1")
    replicas.acquire("http://a:1")
    replicas.acquire("http://b:1")
    replicas.release("http://a:1")
    assert replicas.loads.get("http://a:1") == 1
    assert replicas.loads.total == 2


def test_scraped_load_signal_uses_running_plus_waiting() -> None:
    replicas = replica_set(load_signal="scraped")
    replicas.acquire("http://a:1")
    replicas.set_scraped_load("http://a:1", running=3, waiting=4)
    assert replicas.loads.get("http://a:1") == 7
    both = replica_set(load_signal="both")
    both.acquire("http://a:1")
    both.set_scraped_load("http://a:1", running=0, waiting=0)
    assert both.loads.get("http://a:1") == 1


def test_membership_change_rebuilds_the_ring_once() -> None:
    rebuilds: list[dict[str, float]] = []

    class CountingPolicy(SessionPolicy):
        def set_replicas(self, weights: Mapping[str, float]) -> None:
            rebuilds.append(dict(weights))
            super().set_replicas(weights)

    replicas = ReplicaSet(CountingPolicy())
    replicas.set_members(ReplicaSpec(u) for u in URLS)
    assert not replicas.set_members(ReplicaSpec(u) for u in URLS)  # same set: nothing to do
    replicas.set_members(ReplicaSpec(u) for u in URLS[:2])
    assert len(rebuilds) == 2
    assert "http://c:1" not in replicas.loads


async def test_dns_discovery_turns_addresses_into_replicas() -> None:
    replicas = ReplicaSet(SessionPolicy())
    discovery = DnsDiscovery(replicas, "localhost:8123")
    await discovery.refresh()
    assert "http://127.0.0.1:8123" in replicas.replicas


async def test_a_failed_dns_lookup_keeps_the_last_members() -> None:
    replicas = replica_set()
    discovery = DnsDiscovery(replicas, "no-such-host.invalid:8000")
    await discovery.refresh()
    assert sorted(replicas.replicas) == URLS
