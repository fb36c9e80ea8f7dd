from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from router.core.keys import hash_point
from router.core.loads import LoadTable
from router.core.ring import HashRing, SpillTable, bounded, capacity

REPLICAS = [f"http://10.0.0.{i}:8000" for i in range(1, 10)]
POINTS = [hash_point(f"session-{i}") for i in range(100_000)]


def homes(ring: HashRing) -> list[str]:
    return [next(ring.walk(p)) for p in POINTS]


def ring_of(replicas: list[str]) -> HashRing:
    return HashRing(dict.fromkeys(replicas, 1.0))


def test_rings_built_in_different_orders_agree_on_every_key() -> None:
    shuffled = REPLICAS[:8]
    random.Random(7).shuffle(shuffled)
    assert homes(ring_of(REPLICAS[:8])) == homes(ring_of(shuffled))


def test_adding_a_ninth_replica_moves_about_a_ninth_of_keys() -> None:
    before, after = homes(ring_of(REPLICAS[:8])), homes(ring_of(REPLICAS[:9]))
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0.8 / 9 <= moved / len(POINTS) <= 1.25 / 9
    assert all(b == REPLICAS[8] for a, b in zip(before, after, strict=True) if a != b)


def test_removing_a_replica_moves_only_its_keys() -> None:
    gone = REPLICAS[3]
    before = homes(ring_of(REPLICAS[:8]))
    after = homes(ring_of([r for r in REPLICAS[:8] if r != gone]))
    for a, b in zip(before, after, strict=True):
        assert a in (b, gone)


def test_keys_spread_evenly_over_equal_replicas_with_default_vnodes() -> None:
    counts = Counter(homes(ring_of(REPLICAS[:8])))
    mean = len(POINTS) / 8
    assert max(counts.values()) / mean <= 1.10


def test_weights_scale_a_replicas_share() -> None:
    weights = dict.fromkeys(REPLICAS[:4], 1.0) | {REPLICAS[4]: 2.0}
    counts = Counter(homes(HashRing(weights)))
    assert 1.6 < counts[REPLICAS[4]] / (sum(counts[r] for r in REPLICAS[:4]) / 4) < 2.4


def test_walk_visits_every_replica_once() -> None:
    ring = ring_of(REPLICAS)
    for point in POINTS[:50]:
        order = list(ring.walk(point))
        assert sorted(order) == sorted(REPLICAS)


def test_empty_ring_walks_nowhere() -> None:
    assert list(HashRing({}).walk(123)) == []


def test_unhealthy_replicas_are_skipped_without_moving_other_keys() -> None:
    ring = ring_of(REPLICAS[:8])
    sick = REPLICAS[2]
    healthy = LoadTable(dict.fromkeys((r for r in REPLICAS[:8] if r != sick), 0.0))
    for point in POINTS[:5000]:
        home = next(ring.walk(point))
        chosen = next(bounded(ring.walk(point), healthy, limit=10))
        assert chosen != sick
        if home != sick:
            assert chosen == home


def test_capacity_follows_the_bounded_loads_formula() -> None:
    assert capacity(0, 4, 1.25) == 1
    assert capacity(99, 4, 1.25) == 32  # ceil(1.25 * 100 / 4) = ceil(31.25)
    assert capacity(7, 8, 1.0) == 1


@given(
    loads=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=9),
    point=st.integers(min_value=0, max_value=2**64 - 1),
    factor=st.floats(min_value=1.0, max_value=3.0),
)
def test_no_replica_at_capacity_is_chosen_while_another_is_below(
    loads: list[int], point: int, factor: float
) -> None:
    replicas = REPLICAS[: len(loads)]
    table = LoadTable(dict(zip(replicas, map(float, loads), strict=True)))
    limit = capacity(table.total, len(table), factor)
    chosen = next(bounded(ring_of(replicas).walk(point), table, limit))
    below = [r for r, load in table.items() if load < limit]
    assert below, "bounded loads always leaves room somewhere"
    assert chosen in below


def test_load_table_keeps_its_total() -> None:
    table = LoadTable({"a": 1, "b": 2})
    table.add("a", 3)
    table.set("b", 5)
    table.add("unknown", 9)
    table.remove("a")
    assert table.total == 5
    assert "a" not in table
    assert len(table) == 1


@given(
    ops=st.lists(st.tuples(st.integers(0, 200), st.floats(0, 1000, allow_nan=False)), max_size=300),
    size=st.integers(0, 20),
)
def test_spill_table_never_exceeds_its_size(ops: list[tuple[int, float]], size: int) -> None:
    table = SpillTable(max_entries=size, ttl=30)
    for point, now in ops:
        table.put(point, "r", now)
        assert len(table) <= size


def test_spill_entries_expire() -> None:
    table = SpillTable(max_entries=10, ttl=30)
    table.put(1, "r", now=100)
    assert table.get(1, now=129) == "r"
    assert table.get(1, now=130) is None
    assert len(table) == 0
