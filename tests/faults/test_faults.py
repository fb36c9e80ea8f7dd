"""Fault injection under load (issue 7): real router and replica processes on 127.0.0.1.

Every scenario runs a fault-free baseline to learn each session's home replica, then injects
one fault while the load driver keeps every session talking, and checks: nothing hangs, no
request is lost before its first byte while a healthy replica exists, every failure is a clear
error, and only the sessions homed on the faulty replica move. Bounded loads are switched off
(`--load-factor 100`) so that a session can only move because of the fault.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router.app import build_app
from router.config import Config
from tests.conftest import RouterTestServer, free_port
from tests.faults.conftest import FaultTable, Router, Upstream
from tests.faults.load import (
    LoadDriver,
    Result,
    counts,
    homes,
    lost_before_streaming,
    moved_sessions,
)

pytestmark = pytest.mark.faults

SESSIONS = 18
ROUTER_FLAGS = [
    "--load-factor", "100", "--health-interval", "0.5", "--scrape-interval", "0",
    "--eject-after", "3", "--eject-backoff", "1", "--first-byte-timeout", "1",
    "--idle-timeout", "5", "--max-attempts", "3",
]  # fmt: skip
BASELINE_SECONDS = 2.0
FAULT_SECONDS = 8.0


def session_names(prefix: str) -> list[str]:
    return [f"{prefix}-{i}" for i in range(SESSIONS)]


async def start_fleet(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    n: int = 3,
    flags: tuple[str, ...] = (),
    **upstream_kw: Any,
) -> tuple[Router, list[Upstream]]:
    ups = [start_upstream(f"up{i}", **upstream_kw) for i in range(n)]
    await asyncio.gather(*(u.wait_http(u.url + "/health") for u in ups))
    router = start_router([*ROUTER_FLAGS, *flags, *(a for u in ups for a in ("--replica", u.url))])
    await router.wait_ready()
    return router, ups


def busiest_home(home: dict[str, str]) -> str:
    return Counter(home.values()).most_common(1)[0][0]


def record(
    table: FaultTable,
    scenario: str,
    results: list[Result],
    home: dict[str, str],
    faulty: set[str],
    notes: str = "",
    joined: str | None = None,
) -> dict[str, Any]:
    """Add the scenario's row to the table and return the figures the test asserts on.

    Allowed to move: sessions homed on a faulty replica, and those that moved only onto a
    replica that `joined` during the run.
    """
    outcome = counts(results)
    moved = moved_sessions(home, results)
    allowed = {s for s, url in home.items() if url in faulty}
    if joined is not None:
        elsewhere: dict[str, set[str]] = {}
        for r in results:
            if r.replica and r.replica != home.get(r.session):
                elsewhere.setdefault(r.session, set()).add(r.replica)
        allowed |= {s for s, urls in elsewhere.items() if urls == {joined}}
    lost = lost_before_streaming(results)
    table.add(
        scenario=scenario,
        sent=len(results),
        ok=outcome["ok"],
        clear_error=outcome["error"],
        refused=outcome["refused"],
        unclear=outcome["unclear"],
        hung=outcome["hung"],
        lost_before_streaming=len(lost),
        sessions_moved=len(moved),
        allowed_to_move=len(allowed),
        notes=notes,
    )
    return {"outcome": outcome, "moved": moved, "allowed": allowed, "lost": lost}


def assert_sound(figures: dict[str, Any], results: list[Result]) -> None:
    bad = [r for r in results if r.outcome in ("hung", "unclear")]
    assert not bad, bad[:5]
    assert not figures["lost"], figures["lost"][:5]
    assert figures["moved"] <= figures["allowed"], figures["moved"] - figures["allowed"]


async def baseline(driver: LoadDriver) -> dict[str, str]:
    results = await driver.run(BASELINE_SECONDS, max_turns=4)
    assert all(r.outcome == "ok" for r in results), [r for r in results if r.outcome != "ok"][:3]
    home = homes(results)
    assert set(home) == set(driver.sessions)
    return home


async def under_load(
    driver: LoadDriver, inject: Callable[[], Awaitable[None]], seconds: float = FAULT_SECONDS
) -> list[Result]:
    """Run the load for `seconds`; `inject` runs alongside, starting after one second."""
    load = asyncio.create_task(driver.run(seconds))
    await asyncio.sleep(1.0)
    await inject()
    return await load


async def assert_no_inflight_left(router: Router) -> None:
    for _ in range(20):  # handlers of cancelled requests finish a moment later
        if not any((await router.inflight()).values()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"in-flight counts left over: {await router.inflight()}")


async def test_kill_9_of_a_replica_under_load_moves_only_its_sessions(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    fault_table: FaultTable,
) -> None:
    router, ups = await start_fleet(start_upstream, start_router)
    driver = LoadDriver(router.url, session_names("kill"))
    home = await baseline(driver)
    victim = next(u for u in ups if u.url == busiest_home(home))

    async def inject() -> None:
        victim.kill()

    results = await under_load(driver, inject)
    figures = record(fault_table, "kill -9 one replica", results, home, {victim.url})
    assert_sound(figures, results)
    started_then_broken = [r for r in results if r.outcome == "error" and r.started]
    assert all(r.replica == victim.url for r in started_then_broken)
    await assert_no_inflight_left(router)


async def test_a_replica_hanging_before_the_first_byte_is_failed_over(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    fault_table: FaultTable,
) -> None:
    router, ups = await start_fleet(start_upstream, start_router)
    driver = LoadDriver(router.url, session_names("hang"))
    home = await baseline(driver)
    victim = next(u for u in ups if u.url == busiest_home(home))

    async def inject() -> None:
        await victim.fault(hang=True)

    results = await under_load(driver, inject)
    figures = record(
        fault_table,
        "hang before first byte",
        results,
        home,
        {victim.url},
        "router --first-byte-timeout 1",
    )
    assert_sound(figures, results)
    assert figures["outcome"]["ok"] == len(results)  # nothing had streamed: all failed over
    await assert_no_inflight_left(router)


async def test_bursts_of_500_and_503_are_failed_over_or_relayed_clearly(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    fault_table: FaultTable,
) -> None:
    router, ups = await start_fleet(start_upstream, start_router)
    driver = LoadDriver(router.url, session_names("burst"))
    home = await baseline(driver)
    victim = next(u for u in ups if u.url == busiest_home(home))

    async def inject() -> None:
        for status in (503, 500, 503, 500, 503):
            await victim.fault(status=status)
            await asyncio.sleep(0.6)
            await victim.fault(reset=True)
            await asyncio.sleep(0.6)

    results = await under_load(driver, inject)
    figures = record(
        fault_table,
        "500/503 bursts",
        results,
        home,
        {victim.url},
        "503 failed over; the replica's own 500 relayed as is",
    )
    assert_sound(figures, results)
    errors = [r for r in results if r.outcome == "error"]
    assert all(r.status == 500 and r.replica == victim.url for r in errors), errors[:3]
    await assert_no_inflight_left(router)


async def test_a_replica_closing_mid_stream_ends_streams_with_an_error_event(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    fault_table: FaultTable,
) -> None:
    router, ups = await start_fleet(start_upstream, start_router)
    driver = LoadDriver(router.url, session_names("midstream"))
    home = await baseline(driver)
    victim = next(u for u in ups if u.url == busiest_home(home))

    async def inject() -> None:
        await victim.fault(die_after_chunks=3)

    results = await under_load(driver, inject)
    figures = record(
        fault_table,
        "close mid-stream",
        results,
        home,
        {victim.url},
        "broken streams end with event: error",
    )
    assert_sound(figures, results)
    errors = [r for r in results if r.outcome == "error"]
    assert errors and all(r.started and r.replica == victim.url for r in errors)
    await assert_no_inflight_left(router)


async def test_a_replica_stalling_mid_stream_is_cut_by_the_idle_timeout(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    fault_table: FaultTable,
) -> None:
    router, ups = await start_fleet(start_upstream, start_router, flags=("--idle-timeout", "1"))
    driver = LoadDriver(router.url, session_names("stall"))
    home = await baseline(driver)
    victim = next(u for u in ups if u.url == busiest_home(home))

    async def inject() -> None:
        await victim.fault(chunk_delay=30.0)  # headers and one chunk, then silence

    results = await under_load(driver, inject)
    figures = record(
        fault_table,
        "stall mid-stream",
        results,
        home,
        {victim.url},
        "router --idle-timeout 1; stalled streams end with event: error",
    )
    assert_sound(figures, results)
    errors = [r for r in results if r.outcome == "error"]
    assert errors and all(r.started and r.replica == victim.url for r in errors)
    assert all(r.ended_at - r.sent_at < 5 for r in errors)
    await assert_no_inflight_left(router)


KEEPALIVE_RACE = ("ServerDisconnectedError", "ClientOSError")


async def test_sigterm_under_load_drains_streams_and_refuses_new_connections(
    start_upstream: Callable[..., Upstream],
    start_router: Callable[[list[str]], Router],
    fault_table: FaultTable,
) -> None:
    router, _ = await start_fleet(
        start_upstream, start_router, flags=("--drain-seconds", "10"), chunk_delay=0.1
    )
    driver = LoadDriver(router.url, session_names("sigterm"), stop_on_refused=True)
    home = await baseline(driver)
    signalled: list[float] = []

    async def inject() -> None:
        signalled.append(time.monotonic())
        router.proc.send_signal(signal.SIGTERM)

    results = await under_load(driver, inject, seconds=6.0)
    at = signalled[0]
    inflight = [r for r in results if r.sent_at < at and r.ended_at > at]
    after = [r for r in results if r.sent_at > at]
    # A stream that ends during the drain closes its connection right after its last chunk; a
    # client that reuses that kept-alive connection before it reads the close gets "server
    # disconnected" or "connection reset" with no answer. The router never read that request
    # (the HTTP keep-alive race that RFC 9112 lets clients retry, as the openai SDK does), so it
    # counts as refused.
    raced = [r for r in after if r.status is None and not r.started]
    raced = [r for r in raced if r.detail.startswith(KEEPALIVE_RACE)]
    for r in raced:
        r.outcome = "refused"
    outcome = counts(results)
    fault_table.add(
        scenario="SIGTERM to the router",
        sent=len(results),
        ok=outcome["ok"],
        clear_error=outcome["error"],
        refused=outcome["refused"],
        unclear=outcome["unclear"],
        hung=outcome["hung"],
        lost_before_streaming="n/a",
        sessions_moved="n/a",
        allowed_to_move="n/a",
        notes=f"{sum(r.outcome == 'ok' for r in inflight)}/{len(inflight)} in-flight streams "
        f"finished; {sum(r.outcome == 'refused' for r in after)}/{len(after)} later refused "
        f"({len(raced)} on a kept-alive connection closed unread)",
    )
    assert home
    assert outcome["hung"] == 0
    assert all(r.outcome == "ok" for r in inflight if r.started), inflight[:3]
    assert all(r.outcome == "refused" for r in after if r.sent_at > at + 0.5), after[:3]
    assert router.proc.wait(timeout=15) == 0


# --- DNS discovery: the router in-process, name resolution substituted


def loopback_port(hosts: list[str]) -> int:
    """A port free on every one of the given loopback addresses."""
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on every loopback address")


async def test_replicas_joining_and_leaving_through_dns_move_only_their_sessions(
    start_upstream: Callable[..., Upstream],
    fault_table: FaultTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = loopback_port(hosts)
    ups = [start_upstream(f"dns{i}", host=h, port=port) for i, h in enumerate(hosts)]
    await asyncio.gather(*(u.wait_http(u.url + "/health") for u in ups))
    first, leaver, joiner = ups
    name = "replicas.faults.invalid"
    answer = {"addresses": ["127.0.0.1", "127.0.0.2"]}
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def getaddrinfo(host: Any, port_: Any, *args: Any, **kw: Any) -> Any:
        if host != name:
            return await real_getaddrinfo(host, port_, *args, **kw)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port_)) for a in answer["addresses"]
        ]

    # The resolver is replaced only for this name and only in this process: the router's
    # DnsDiscovery still parses, sorts and turns the addresses into replicas itself.
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    config = Config(
        replicas_dns=f"{name}:{port}",
        host="127.0.0.1",
        dns_interval=0.2,
        health_interval=0.5,
        scrape_interval=0,
        load_factor=100,
        first_byte_timeout=1,
        idle_timeout=5,
        eject_backoff=1,
    )
    config.validate()
    server = RouterTestServer(build_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        driver = LoadDriver(url, session_names("dns"))
        home = await baseline(driver)
        assert set(home.values()) == {first.url, leaver.url}

        async def inject() -> None:
            answer["addresses"] = hosts  # joins
            await asyncio.sleep(3.0)
            leaver.kill()  # the pod dies; DNS catches up a moment later
            await asyncio.sleep(0.5)
            answer["addresses"] = ["127.0.0.1", "127.0.0.3"]

        results = await under_load(driver, inject)
    finally:
        await server.close()
    to_joiner = {r.session for r in results if r.replica == joiner.url}
    figures = record(
        fault_table,
        "DNS: join, then kill -9 + leave",
        results,
        home,
        {leaver.url},
        f"{len(to_joiner)} of {SESSIONS} sessions served by the joining replica",
        joined=joiner.url,
    )
    assert_sound(figures, results)
    assert 0 < len(to_joiner) < SESSIONS
