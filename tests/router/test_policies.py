from __future__ import annotations

import random

import pytest

from router.core.keys import NO_KEY, KeyKind, RoutingKey, hash_point
from router.core.loads import Loads, LoadTable
from router.core.policies import (
    POLICY_NAMES,
    ConsistentHashPolicy,
    Outcome,
    Turn,
    make_policy,
)
from router.core.ring import SpillTable

REPLICAS = [f"http://r{i}:8000" for i in range(4)]


def key(name: str) -> RoutingKey:
    return RoutingKey(KeyKind.HEADER, name, hash_point(name))


def hash_policy(**kwargs: object) -> ConsistentHashPolicy:
    policy = ConsistentHashPolicy(**kwargs)  # type: ignore[arg-type]
    policy.set_replicas(dict.fromkeys(REPLICAS, 1.0))
    return policy


def loads_with(counts: dict[str, int]) -> Loads:
    """Healthy replicas with these requests in flight."""
    loads = Loads()
    loads.set_members(counts)
    for url, count in counts.items():
        loads.set_healthy(url, True)
        for _ in range(count):
            loads.start(url)
    return loads


def idle() -> LoadTable:
    return LoadTable(dict.fromkeys(REPLICAS, 0.0))


def test_turns_of_one_session_land_on_one_replica() -> None:
    policy = hash_policy()
    first = {
        policy.route_counts(key("conv-1"), idle(), now=0, attempts=3).candidates[0]
        for _ in range(50)
    }
    assert len(first) == 1


def test_candidates_are_distinct_and_bounded_by_attempts() -> None:
    route = hash_policy().route_counts(key("c"), idle(), now=0, attempts=3)
    assert len(route.candidates) == 3
    assert len(set(route.candidates)) == 3
    assert route.outcome is Outcome.HOME


def test_an_overloaded_home_spills_and_later_turns_stick_to_the_spill() -> None:
    policy = hash_policy(load_factor=1.25)
    k = key("conv-hot")
    home = policy.route_counts(k, idle(), now=0, attempts=1).candidates[0]
    loads = idle()
    loads.set(home, 10)  # capacity = ceil(1.25 * 11 / 4) = 4
    spilled = policy.route_counts(k, loads, now=1, attempts=1)
    assert spilled.outcome is Outcome.SPILLED
    target = spilled.candidates[0]
    assert target != home
    # The next replica on the ring now looks busier than another, but the key's cache is there.
    loads.set(target, 2)
    again = policy.route_counts(k, loads, now=2, attempts=2)
    assert again.outcome is Outcome.STICKY_SPILL
    assert again.candidates[0] == target
    assert target not in again.candidates[1:]
    # Home recovered: back home, and the spill entry is gone.
    loads.set(home, 0)
    assert policy.route_counts(k, loads, now=3, attempts=1).candidates[0] == home
    assert len(policy.spill) == 0


def test_sticky_spill_expires_after_its_ttl() -> None:
    policy = hash_policy(spill=SpillTable(max_entries=10, ttl=5))
    k = key("conv-ttl")
    home = policy.route_counts(k, idle(), now=0, attempts=1).candidates[0]
    loads = idle()
    loads.set(home, 10)
    policy.route_counts(k, loads, now=0, attempts=1)
    assert policy.route_counts(k, loads, now=4, attempts=1).outcome is Outcome.STICKY_SPILL
    assert policy.route_counts(k, loads, now=100, attempts=1).outcome is Outcome.SPILLED


def test_no_key_goes_to_the_least_loaded_replica() -> None:
    loads = LoadTable({REPLICAS[0]: 3, REPLICAS[1]: 1, REPLICAS[2]: 0, REPLICAS[3]: 2})
    route = hash_policy().route_counts(NO_KEY, loads, now=0, attempts=2)
    assert route.outcome is Outcome.NO_KEY
    assert route.candidates == (REPLICAS[2], REPLICAS[1])


def test_no_healthy_replica_gives_no_candidates() -> None:
    for name in POLICY_NAMES:
        policy = make_policy(name)
        policy.set_replicas(dict.fromkeys(REPLICAS, 1.0))
        assert policy.route(Turn(key("x"), 100), Loads(), now=0, attempts=3).candidates == ()


def test_round_robin_cycles_over_healthy_replicas() -> None:
    policy = make_policy("round_robin")
    loads = loads_with(dict.fromkeys(REPLICAS[:3], 0))
    firsts = [policy.route(Turn(key("same"), 1), loads, 0, 2).candidates[0] for _ in range(6)]
    assert firsts == REPLICAS[:3] * 2


def test_least_loaded_prefers_idle_replicas_whatever_the_key() -> None:
    policy = make_policy("least_loaded")
    loads = loads_with({REPLICAS[0]: 5, REPLICAS[1]: 0})
    assert policy.route(Turn(key("a"), 1), loads, 0, 2).candidates == (REPLICAS[1], REPLICAS[0])


def test_random_policy_is_seedable_and_only_picks_healthy_replicas() -> None:
    loads = loads_with(dict.fromkeys(REPLICAS[:2], 0))
    a = make_policy("random", rng=random.Random(1))
    b = make_policy("random", rng=random.Random(1))
    picks_a = [a.route(Turn(key("k"), 1), loads, 0, 1).candidates for _ in range(20)]
    picks_b = [b.route(Turn(key("k"), 1), loads, 0, 1).candidates for _ in range(20)]
    assert picks_a == picks_b
    assert {p[0] for p in picks_a} <= set(REPLICAS[:2])


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("sticky")


def test_bounded_loads_keep_every_replica_under_capacity_as_load_arrives() -> None:
    """Sessions that all hash to one place still spread once their home fills up."""
    policy = hash_policy(load_factor=1.25)
    loads = idle()
    rng = random.Random(3)
    for i in range(400):
        route = policy.route_counts(key(f"s{rng.randrange(5)}"), loads, now=i, attempts=1)
        limit_before = -(-1.25 * (loads.total + 1) // 4)
        assert (loads.get(route.candidates[0]) or 0) < limit_before
        loads.add(route.candidates[0], 1)
    assert max(load for _, load in loads.items()) / (loads.total / 4) <= 1.25 + 4 / 400
