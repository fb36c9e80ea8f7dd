"""The session policy's placement: work-based loads, first-turn placement, cost-aware spills."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.keys import KeyKind, RoutingKey, hash_point
from router.core.loads import RATE_MIN_SAMPLES, Loads, PrefillFit
from router.core.placement import ConversationTable, within_bound
from router.core.policies import Outcome, SessionPolicy, Turn

REPLICAS = [f"http://r{i}:8000" for i in range(4)]
RATE = 1000.0  # tokens per second, configured so waits are easy to reason about


def key(name: str) -> RoutingKey:
    return RoutingKey(KeyKind.HEADER, name, hash_point(name))


def fleet(replicas: list[str] = REPLICAS, **kwargs: object) -> tuple[SessionPolicy, Loads]:
    policy = SessionPolicy(**kwargs)  # type: ignore[arg-type]
    policy.set_replicas(dict.fromkeys(replicas, 1.0))
    loads = Loads(prefill_rate=RATE)
    loads.set_members(replicas)
    for url in replicas:
        loads.set_healthy(url, True)
    return policy, loads


def ring_order(policy: SessionPolicy, name: str) -> list[str]:
    return list(policy.ring.walk(key(name).point))


def test_turns_of_one_conversation_stay_on_one_replica() -> None:
    policy, loads = fleet()
    first = policy.route(Turn(key("c"), 500, first=True), loads, now=0, attempts=3)
    assert first.outcome is Outcome.PLACED
    for turn in range(2, 8):
        route = policy.route(Turn(key("c"), 500 + 100 * turn), loads, now=turn, attempts=3)
        assert route.outcome is Outcome.HOME
        assert route.candidates[0] == first.candidates[0]
        assert route.tokens == 100 * turn - 100 * (turn - 1) or turn == 2


def test_a_later_turn_at_home_owes_only_its_new_part() -> None:
    policy, loads = fleet()
    policy.route(Turn(key("c"), 1000, first=True), loads, now=0, attempts=1)
    route = policy.route(Turn(key("c"), 1300), loads, now=1, attempts=1)
    assert route.tokens == 300


def test_a_first_turn_goes_to_its_ring_home_when_its_candidates_are_equally_pressed() -> None:
    a, loads_a = fleet()
    b, loads_b = fleet()
    for i in range(50):
        name = f"conv-{i}"
        first_a = a.route(Turn(key(name), 800, first=True), loads_a, 0, 1).candidates[0]
        first_b = b.route(Turn(key(name), 800, first=True), loads_b, 0, 1).candidates[0]
        assert first_a == first_b == ring_order(a, name)[0]
        a.conversations = ConversationTable()  # keep footprints even: only the rule is tested
        b.conversations = ConversationTable()


def test_a_first_turn_leaves_a_ring_home_that_owes_too_much_work() -> None:
    policy, loads = fleet()
    home, second = ring_order(policy, "c")[:2]
    loads.start(home, 20_000)
    route = policy.route(Turn(key("c"), 500, first=True), loads, now=0, attempts=1)
    assert route.outcome is Outcome.PLACED
    assert route.candidates == (second,)


def test_a_first_turn_leaves_a_ring_home_that_holds_too_many_live_conversations() -> None:
    policy, loads = fleet()
    home, second = ring_order(policy, "c")[:2]
    for i in range(10):
        policy.conversations.put(hash_point(f"other-{i}"), home, 5000, now=0)
    route = policy.route(Turn(key("c"), 500, first=True), loads, now=0, attempts=1)
    assert route.candidates == (second,)


def test_with_eviction_pressure_a_first_turn_leaves_the_replica_whose_cache_churns() -> None:
    policy, loads = fleet()
    home, second = ring_order(policy, "c")[:2]
    assert policy.route(Turn(key("c"), 500, first=True), loads, 0, 1).candidates == (home,)
    policy, loads = fleet()
    loads.set_evictions(home, 40.0)  # --kv-pressure: the scraper feeds these from the index
    loads.set_evictions(second, 10.0)
    assert policy.route(Turn(key("c"), 500, first=True), loads, 0, 1).candidates == (second,)


def test_a_later_turn_stays_home_when_moving_would_cost_more_than_waiting() -> None:
    policy, loads = fleet()
    home = policy.route(Turn(key("c"), 30_000, first=True), loads, 0, 1).candidates[0]
    loads.start(home, 5_000)  # over bound, but 5 s of wait < 30 s of re-prefill elsewhere
    route = policy.route(Turn(key("c"), 30_100), loads, now=1, attempts=1)
    assert route.outcome is Outcome.HOME
    assert route.candidates == (home,)


def test_a_later_turn_moves_when_waiting_costs_more_and_the_conversation_stays_moved() -> None:
    policy, loads = fleet()
    home = policy.route(Turn(key("c"), 1000, first=True), loads, 0, 1).candidates[0]
    busy = loads.start(home, 50_000)
    moved = policy.route(Turn(key("c"), 1100), loads, now=1, attempts=1)
    assert moved.outcome is Outcome.SPILLED
    target = moved.candidates[0]
    assert target != home
    assert moved.tokens == 1100  # the whole history is prefilled there
    assert busy is not None
    loads.finish(busy)  # the old home is idle again: no reason to go back
    again = policy.route(Turn(key("c"), 1200), loads, now=2, attempts=1)
    assert again.outcome is Outcome.HOME
    assert again.candidates == (target,)


def test_a_conversation_whose_replica_is_out_is_placed_afresh() -> None:
    policy, loads = fleet()
    home = policy.route(Turn(key("c"), 1000, first=True), loads, 0, 1).candidates[0]
    loads.set_healthy(home, False)
    route = policy.route(Turn(key("c"), 1100), loads, now=1, attempts=3)
    assert route.outcome is Outcome.FAILOVER
    assert home not in route.candidates
    assert route.tokens == 1100


def test_a_later_turn_this_router_has_not_seen_goes_to_its_ring_home() -> None:
    policy, loads = fleet()
    route = policy.route(Turn(key("c"), 4000), loads, now=0, attempts=2)
    assert route.outcome is Outcome.HOME
    assert list(route.candidates) == ring_order(policy, "c")[:2]


def test_a_failover_moves_the_conversation_to_where_it_was_served() -> None:
    policy, loads = fleet()
    turn = Turn(key("c"), 1000, first=True)
    route = policy.route(turn, loads, 0, 3)
    policy.moved(turn, route.candidates[1], now=0)
    assert policy.route(Turn(key("c"), 1100), loads, 1, 1).candidates == (route.candidates[1],)


def test_no_key_goes_where_the_first_token_comes_soonest() -> None:
    policy, loads = fleet()
    for url in REPLICAS[:3]:
        loads.start(url, 1000)
    route = policy.route(Turn(RoutingKey(KeyKind.NONE, "", 0), 10), loads, 0, 2)
    assert route.outcome is Outcome.NO_KEY
    assert route.candidates[0] == REPLICAS[3]


@settings(max_examples=200, deadline=None)
@given(
    owed=st.lists(st.integers(0, 40_000), min_size=4, max_size=4),
    history=st.integers(1, 20_000),
    grown=st.integers(0, 2_000),
)
def test_a_turn_never_leaves_a_home_that_is_within_bound(
    owed: list[int], history: int, grown: int
) -> None:
    policy, loads = fleet()
    home = policy.route(Turn(key("c"), history, first=True), loads, 0, 1).candidates[0]
    for url, tokens in zip(REPLICAS, owed, strict=True):
        loads.start(url, tokens)
    account = loads.get(home)
    assert account is not None
    tokens = history + grown
    route = policy.route(Turn(key("c"), tokens), loads, now=1, attempts=1)
    if within_bound(loads.owed(account), loads.fleet_owed(), tokens, 4, policy.load_factor):
        assert route.candidates == (home,)
    if route.candidates != (home,):  # it moved: only to where its first token comes sooner
        target = loads.get(route.candidates[0])
        assert target is not None
        assert loads.wait(target, tokens) < loads.wait(account, grown)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3), st.floats(0, 1e4)), max_size=300))
def test_the_conversation_table_is_bounded_and_its_footprints_add_up(
    ops: list[tuple[int, int, float]],
) -> None:
    table = ConversationTable(max_entries=20, ttl=5.0, live_window=2.0)
    now = 0.0
    for point, index, tokens in ops:
        now += 0.1
        table.put(point, REPLICAS[index], tokens, now)
        assert len(table) <= 20
    live: dict[str, float] = {}
    for point in range(51):
        placed = table.get(point, now)
        if placed is not None and placed.last > now - 2.0:
            live[placed.replica] = live.get(placed.replica, 0.0) + placed.tokens
    for replica in REPLICAS:
        assert abs(table.footprint.get(replica, 0.0) - live.get(replica, 0.0)) < 1e-6
    assert abs(table.total_footprint - sum(live.values())) < 1e-6


def test_conversations_leave_the_footprint_when_idle_and_the_table_after_their_ttl() -> None:
    table = ConversationTable(max_entries=10, ttl=5.0, live_window=1.0)
    table.put(1, REPLICAS[0], 100, now=0)
    assert table.footprint[REPLICAS[0]] == 100
    assert table.get(1, now=1.5) is not None
    assert table.footprint[REPLICAS[0]] == 0  # idle: its blocks are evictable now
    table.put(1, REPLICAS[0], 120, now=2)  # a later turn: live again
    assert table.footprint[REPLICAS[0]] == 120
    assert table.get(1, now=6.9) is not None
    assert table.get(1, now=7.0) is None
    assert table.footprint[REPLICAS[0]] == 0


def test_the_prefill_fit_learns_rate_and_base_from_times_to_first_token() -> None:
    fit = PrefillFit()
    rng = random.Random(7)
    for _ in range(200):
        tokens = rng.uniform(10, 8000)
        fit.observe(tokens, 0.02 + tokens / 4000 + rng.gauss(0, 0.002))
    assert 3600 < fit.rate < 4400
    assert 0.01 < fit.base < 0.03


def test_the_prefill_fit_keeps_its_prior_until_it_has_seen_enough() -> None:
    fit = PrefillFit()
    prior = fit.rate
    for _ in range(RATE_MIN_SAMPLES - 1):
        fit.observe(1000, 0.5)
    assert fit.rate == prior
    configured = PrefillFit(configured=123.0)
    configured.observe(1000, 0.5)
    assert configured.rate == 123.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["start", "first", "finish", "eject", "admit"]),
                          st.integers(0, 3), st.floats(0, 5000)), max_size=200))  # fmt: skip
def test_owed_work_is_what_requests_in_prefill_owe(ops: list[tuple[str, int, float]]) -> None:
    loads = Loads()
    loads.set_members(REPLICAS)
    for url in REPLICAS:
        loads.set_healthy(url, True)
    tickets = []
    for op, index, tokens in ops:
        url = REPLICAS[index]
        if op == "start":
            ticket = loads.start(url, tokens)
            assert ticket is not None
            tickets.append(ticket)
        elif op == "first" and tickets:
            loads.first_token(tickets[index % len(tickets)], 0.1)
        elif op == "finish" and tickets:
            loads.finish(tickets.pop(index % len(tickets)))
        elif op in ("eject", "admit"):
            loads.set_healthy(url, op == "admit")
    for url in REPLICAS:
        account = loads.get(url)
        assert account is not None
        mine = [t for t in tickets if t.account is account]
        assert account.inflight == len(mine)
        assert abs(account.owed_prefill - sum(t.tokens for t in mine if t.prefilling)) < 1e-6
        assert account.decoding == sum(1 for t in mine if not t.prefilling)
    healthy = sum(a.owed_prefill for a in loads.healthy())
    assert abs(loads.total_owed - healthy) < 1e-6


def truth_fleet(lookup: str = "doubt") -> tuple[SessionPolicy, Loads]:
    return fleet(lookup=lookup)


def test_a_later_turn_this_router_has_not_seen_asks_engine_truth_then_goes_where_it_is() -> None:
    policy, loads = truth_fleet()
    turn = Turn(key("c"), 4000)
    assert policy.route(turn, loads, now=0, attempts=2).lookup
    holder = ring_order(policy, "c")[1]  # not the ring's home: another instance placed it
    truth = {url: 0.0 for url in REPLICAS} | {holder: 3900.0}
    route = policy.route(replace(turn, cached=truth), loads, now=0, attempts=2)
    assert route.outcome is Outcome.FOUND
    assert route.candidates[0] == holder
    assert route.tokens == 100  # only what is not cached there
    assert policy.route(Turn(key("c"), 4100), loads, now=1, attempts=1).outcome is Outcome.HOME


def test_a_conversation_this_router_placed_is_routed_without_asking() -> None:
    policy, loads = truth_fleet()
    policy.route(Turn(key("c"), 1000, first=True), loads, 0, 1)
    assert not policy.route(Turn(key("c"), 1100), loads, 1, 1).lookup


def test_a_conversation_that_grew_by_turns_this_router_did_not_route_asks_again() -> None:
    # Two instances take turns: the other one moved the conversation while this one looked away.
    policy, loads = truth_fleet()
    placed = policy.route(Turn(key("c"), 1000, first=True, length=2), loads, 0, 1).candidates[0]
    next_turn = Turn(key("c"), 1100, length=4)  # one turn on: its own, nothing missed
    assert not policy.route(next_turn, loads, 1, 1).lookup
    skipped = Turn(key("c"), 1300, length=8)  # two turns on: another instance served one
    assert policy.route(skipped, loads, 2, 1).lookup
    elsewhere = next(url for url in REPLICAS if url != placed)
    truth = dict.fromkeys(REPLICAS, 0.0) | {placed: 1000.0, elsewhere: 1200.0}
    route = policy.route(replace(skipped, cached=truth), loads, 2, 1)
    assert (route.candidates[0], route.outcome) == (elsewhere, Outcome.FOUND)
    assert not policy.route(Turn(key("c"), 1400, length=10), loads, 3, 1).lookup


def test_first_turns_never_ask_and_lookup_never_means_never() -> None:
    policy, loads = truth_fleet()
    assert not policy.route(Turn(key("c"), 1000, first=True), loads, 0, 1).lookup
    never, loads = truth_fleet("never")
    assert not never.route(Turn(key("d"), 1000), loads, 0, 1).lookup


def test_with_nothing_cached_anywhere_a_looked_up_turn_is_placed_freely() -> None:
    policy, loads = truth_fleet()
    route = policy.route(Turn(key("c"), 1000, cached={}), loads, 0, 1)
    assert route.outcome is Outcome.PLACED and not route.lookup


def test_a_prompt_anchor_key_asks_engine_truth_even_when_the_key_is_known() -> None:
    policy, loads = truth_fleet()
    anchor = RoutingKey(KeyKind.PREFIX, "p-shared", hash_point("p-shared"))
    policy.route(Turn(anchor, 1000, first=True), loads, 0, 1)  # another conversation, same key
    assert policy.route(Turn(anchor, 1500), loads, 1, 1).lookup
    holder = REPLICAS[3]
    truth = dict.fromkeys(REPLICAS, 200.0) | {holder: 1400.0}  # the shared opening everywhere
    route = policy.route(Turn(anchor, 1500, cached=truth), loads, 1, 1)
    assert route.candidates == (holder,) and route.outcome is Outcome.FOUND


def test_among_replicas_holding_as_much_the_least_pressed_is_chosen() -> None:
    policy, loads = truth_fleet()
    busy, idle = REPLICAS[0], REPLICAS[1]
    loads.start(busy, 30_000)
    truth = dict.fromkeys(REPLICAS, 0.0) | {busy: 500.0, idle: 500.0}
    route = policy.route(Turn(key("c"), 2000, cached=truth), loads, 0, 1)
    assert route.candidates == (idle,) and route.outcome is Outcome.FOUND


def test_a_spill_asks_engine_truth_first_and_counts_what_the_target_already_holds() -> None:
    policy, loads = truth_fleet()
    home = policy.route(Turn(key("c"), 1000, first=True), loads, 0, 1).candidates[0]
    loads.start(home, 50_000)
    assert policy.route(Turn(key("c"), 1100), loads, 1, 1).lookup
    target = next(r for r in ring_order(policy, "c") if r != home)
    truth = dict.fromkeys(REPLICAS, 0.0) | {home: 1000.0, target: 600.0}
    moved = policy.route(Turn(key("c"), 1100, cached=truth), loads, 1, 1)
    assert moved.outcome is Outcome.SPILLED
    assert moved.tokens == 1100 - truth[moved.candidates[0]]
