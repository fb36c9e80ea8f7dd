from __future__ import annotations

from collections.abc import Mapping

from router.config import Config, ReplicaSpec
from router.core.loads import Loads
from router.core.outliers import OUTLIER_MIN_SAMPLES, OutlierDetector
from router.core.policies import SessionPolicy
from router.discovery import DnsDiscovery
from router.fleet import Fleet
from router.replicas import ReplicaSet

URLS = ["http://a:1", "http://b:1", "http://c:1"]


def config(**overrides: object) -> Config:
    return Config(**{"replica": URLS, **overrides})  # type: ignore[arg-type]


def fleet(**overrides: object) -> Fleet:
    built = Fleet(config(**overrides))
    built.replicas.set_members(ReplicaSpec(u) for u in URLS)
    return built


def test_consecutive_failures_eject_and_a_good_probe_readmits() -> None:
    f = fleet(eject_after=2, eject_backoff=1.0)
    replicas, table = f.replicas, f.loads.table
    replicas.record_probe("http://a:1", ok=True, now=0)
    replicas.record_failure("http://a:1", now=0, reason="connect")
    assert "http://a:1" in table
    replicas.record_failure("http://a:1", now=0, reason="connect")
    assert "http://a:1" not in table
    a = replicas.replicas["http://a:1"]
    assert not replicas.due_for_probe(a, now=0.5)
    assert replicas.due_for_probe(a, now=1.0)
    replicas.record_probe("http://a:1", ok=True, now=1.0)
    assert "http://a:1" in table


def test_a_replica_never_seen_healthy_is_out_at_its_first_failure() -> None:
    f = fleet(eject_after=5)
    f.replicas.record_probe("http://a:1", ok=False, now=0, reason="refused")
    assert "http://a:1" not in f.loads.table


def test_repeated_ejections_back_off_exponentially_up_to_the_maximum() -> None:
    replicas = fleet(eject_after=1, eject_backoff=1.0, eject_backoff_max=5.0).replicas
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
    loads = fleet().loads
    first = loads.start("http://a:1")
    loads.start("http://a:1")
    loads.start("http://b:1")
    assert first is not None and loads.finish(first)
    assert loads.table.get("http://a:1") == 1
    assert loads.table.total == 2


def test_an_ejected_replica_keeps_counting_and_comes_back_with_its_real_load() -> None:
    f = fleet(eject_after=1)
    f.replicas.record_probe("http://a:1", ok=True, now=0)
    f.loads.start("http://a:1")
    f.replicas.record_failure("http://a:1", now=0, reason="x")
    f.loads.start("http://a:1")
    assert "http://a:1" not in f.loads.table
    f.replicas.record_probe("http://a:1", ok=True, now=10)
    assert f.loads.table.get("http://a:1") == 2


def test_a_request_on_a_replica_that_left_and_rejoined_does_not_count_on_the_new_member() -> None:
    f = fleet()
    account = f.loads.start("http://a:1")
    f.replicas.set_members(ReplicaSpec(u) for u in URLS[1:])
    f.replicas.set_members(ReplicaSpec(u) for u in URLS)
    assert account is not None and not f.loads.finish(account)
    assert f.loads.inflight("http://a:1") == 0
    assert f.loads.table.get("http://a:1") == 0


def test_scraped_load_signal_uses_running_plus_waiting() -> None:
    scraped = Loads("scraped")
    scraped.set_members(URLS)
    scraped.set_healthy("http://a:1", True)
    scraped.start("http://a:1")
    scraped.set_scraped("http://a:1", running=3, waiting=4)
    assert scraped.table.get("http://a:1") == 7
    both = Loads("both")
    both.set_members(URLS)
    both.set_healthy("http://a:1", True)
    both.start("http://a:1")
    both.set_scraped("http://a:1", running=0, waiting=0)
    assert both.table.get("http://a:1") == 1


def test_membership_change_rebuilds_the_ring_once() -> None:
    rebuilds: list[dict[str, float]] = []

    class CountingPolicy(SessionPolicy):
        def set_replicas(self, weights: Mapping[str, float]) -> None:
            rebuilds.append(dict(weights))
            super().set_replicas(weights)

    replicas = ReplicaSet(config())
    loads = Loads("local")
    replicas.on_members += [loads.set_members, CountingPolicy().set_replicas]
    replicas.on_health.append(loads.set_healthy)
    replicas.set_members(ReplicaSpec(u) for u in URLS)
    assert not replicas.set_members(ReplicaSpec(u) for u in URLS)  # same set: nothing to do
    replicas.set_members(ReplicaSpec(u) for u in URLS[:2])
    assert len(rebuilds) == 2
    assert "http://c:1" not in loads.table


def test_a_replica_far_slower_than_the_fleet_median_is_an_outlier() -> None:
    outliers = OutlierDetector(factor=3.0, min_ttft=0.5)
    verdicts = []
    for i in range(OUTLIER_MIN_SAMPLES):
        for url in URLS[:3]:
            outliers.observe(url, 0.1, now=i)
        verdicts.append(outliers.observe("http://slow:1", 2.0, now=i + 0.5))
    assert verdicts[-1] is not None and "slow" in verdicts[-1]
    assert all(v is None for v in verdicts[:-1])  # no verdict before enough samples
    outliers.forget("http://slow:1")
    assert outliers.observe("http://slow:1", 2.0, now=100) is None


def test_slow_but_not_over_the_minimum_is_no_outlier() -> None:
    outliers = OutlierDetector(factor=3.0, min_ttft=5.0)
    for i in range(2 * OUTLIER_MIN_SAMPLES):
        for url in URLS[:3]:
            outliers.observe(url, 0.1, now=i)
        assert outliers.observe("http://slow:1", 2.0, now=i) is None


async def test_dns_discovery_turns_addresses_into_replicas() -> None:
    replicas = ReplicaSet(config())
    discovery = DnsDiscovery(replicas, config(replica=[], replicas_dns="localhost:8123"))
    await discovery.refresh()
    assert "http://127.0.0.1:8123" in replicas.replicas


async def test_a_failed_dns_lookup_keeps_the_last_members() -> None:
    replicas = fleet().replicas
    discovery = DnsDiscovery(replicas, config(replica=[], replicas_dns="no-such-host.invalid:8000"))
    await discovery.refresh()
    assert sorted(replicas.replicas) == URLS
