"""Subscribers to the replicas' vLLM KV-cache events: they keep the block index up to date.

One asyncio task per replica and data-parallel rank (docs/design.md, Engine truth): a ZeroMQ SUB
socket on the rank's publisher, and a DEALER to its replay socket (a ROUTER on vLLM's side) to
catch up on connect and after a sequence gap. ZeroMQ reconnects by itself, with exponential
backoff (RECONNECT_IVL doubling up to RECONNECT_IVL_MAX); a socket monitor tells when the
connection is up, and each new connection starts with a catch-up. A publisher that restarted
(after a reconnect, the replay does not begin with the last batch applied; or a live sequence
lower than expected, with a newer timestamp) clears what the index held for the rank.
Nothing here blocks the event loop: pyzmq's asyncio sockets, and decoding and indexing of a
batch are a few tens of microseconds (a long replay yields between batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from router.config import Config, EventEndpoints, event_endpoints
from router.core.block_index import BlockIndex
from router.core.kv_events import EventBatch, MalformedMessage, decode_message
from router.metrics import ReplicaEvents
from router.replicas import ReplicaSet

log = logging.getLogger("router.subscriber")

RECONNECT_MIN_MS = 200
RECONNECT_MAX_MS = 10_000
REPLAY_TIMEOUT_S = 5.0  # silence from the replay socket past this ends a catch-up
REPLAY_MAX_BATCHES = 100_000  # vLLM keeps 10,000 by default (buffer_steps)
POLL_MS = 1000


@dataclass
class RankState:
    """One rank's subscription: where it is in the publisher's sequence, and what happened."""

    endpoints: EventEndpoints
    connected: bool = False
    expected: int | None = None  # the next sequence number wanted
    last_ts: float = 0.0  # the engine's wall-clock time of the last batch applied
    lag_s: float | None = None  # receive time - engine time of the last live batch
    batches: int = 0
    events: int = 0
    gaps: int = 0  # sequence gaps seen
    lost: int = 0  # batches a gap lost for good (not in the replay buffer, or no replay socket)
    replays: int = 0
    restarts: int = 0
    malformed: int = 0  # messages that could not be read at all
    skipped: int = 0  # events left out (unknown types, malformed events)
    connects: int = 0


class RankSubscriber:
    """Follows one rank's publisher and applies its batches to the index, in order."""

    def __init__(
        self,
        url: str,
        endpoints: EventEndpoints,
        index: BlockIndex,
        context: zmq.asyncio.Context,
        topic: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.state = RankState(endpoints)
        self.index = index
        self.context = context
        self.topic = topic.encode()
        self.clock = clock  # wall clock: batches carry the engine's time.time()

    async def run(self) -> None:
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MIN_MS)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sub.connect(self.state.endpoints.publisher)
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                ready = dict(await poller.poll(POLL_MS))
                if monitor in ready:
                    await self._on_monitor(parse_monitor_message(await monitor.recv_multipart()))
                if sub in ready:
                    await self._on_message(await sub.recv_multipart())
        finally:
            self.state.connected = False
            with contextlib.suppress(zmq.ZMQError):
                sub.disable_monitor()
            monitor.close(linger=0)
            sub.close(linger=0)

    async def _on_monitor(self, event: Mapping[str, object]) -> None:
        if event["event"] == zmq.EVENT_CONNECTED:
            self.state.connected = True
            self.state.connects += 1
            log.info("KV events of %s rank %d connected", self.url, self.state.endpoints.rank)
            await self.resume()
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            self.state.connected = False
            log.warning("KV events of %s rank %d disconnected", self.url, self.state.endpoints.rank)

    async def _on_message(self, frames: list[bytes]) -> None:
        try:
            batch = decode_message(frames)
        except MalformedMessage as error:
            self.state.malformed += 1
            log.debug("unreadable KV event message from %s: %s", self.url, error)
            return
        if batch is None:
            return
        await self.receive(batch, live=True)

    async def receive(self, batch: EventBatch, live: bool) -> None:
        """Apply a batch in sequence: skip duplicates, catch up on gaps, reset on restarts."""
        state = self.state
        expected = state.expected
        if expected is not None and batch.sequence < expected:
            if batch.ts <= state.last_ts:
                return  # already applied (a replay and the live stream overlap)
            # A lower sequence with a newer time: the publisher restarted, its cache is empty.
            self._restarted()
            expected = None
            if live and state.endpoints.replay:
                await self.catch_up(0)
                if state.expected is not None and batch.sequence < state.expected:
                    return
        if expected is not None and batch.sequence > expected:
            state.gaps += 1
            if live and state.endpoints.replay:
                await self.catch_up(expected)
                if state.expected is not None and batch.sequence < state.expected:
                    return  # the replay brought this one too
            missing = batch.sequence - (state.expected or expected)
            if missing > 0:
                state.lost += missing
        self._apply(batch, live)

    async def resume(self) -> None:
        """Catch up on what was published while away, or before we came (from the start of the
        publisher's buffer). After a reconnect, the replay must begin with the last batch
        applied, as it was: otherwise the publisher is a new process (its engine restarted), and
        what the index held for this rank is forgotten and rebuilt from its buffer."""
        state = self.state
        if not state.expected:
            await self.catch_up(0)
        elif not await self.catch_up(state.expected - 1, state.last_ts):
            self._restarted()
            await self.catch_up(0)

    def _restarted(self) -> None:
        state = self.state
        state.restarts += 1
        log.warning("KV event publisher of %s rank %d restarted", self.url, state.endpoints.rank)
        self.index.clear(self.url, state.endpoints.rank)
        state.expected = None
        state.last_ts = 0.0

    async def catch_up(self, start: int, last_ts: float | None = None) -> bool:
        """Ask the replay socket for every batch from `start` and apply them in order. With
        `last_ts`, the first must be batch `start` with that timestamp (the last one applied):
        False if it is not (the publisher restarted), and nothing is applied."""
        state = self.state
        if not state.endpoints.replay:
            return True
        state.replays += 1
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(state.endpoints.replay)
        first = True
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            for _ in range(REPLAY_MAX_BATCHES):
                if not await dealer.poll(REPLAY_TIMEOUT_S * 1000):
                    log.warning("KV event replay of %s timed out", self.url)
                    break
                frames = await dealer.recv_multipart()
                try:
                    batch = decode_message(frames[1:])  # less the empty delimiter
                except MalformedMessage:
                    state.malformed += 1
                    continue
                if batch is None:
                    if first and last_ts is not None:
                        return False  # the last batch applied is not there
                    break
                if first and last_ts is not None:
                    if batch.sequence != start or batch.ts != last_ts:
                        return False
                elif first and batch.sequence > start and state.expected is not None:
                    state.lost += batch.sequence - start  # the buffer no longer reaches back
                first = False
                if state.expected is None or batch.sequence >= state.expected:
                    self._apply(batch, live=False)
                await asyncio.sleep(0)  # a long replay must not hold up requests
            if state.expected is None:
                state.expected = start  # nothing buffered: the stream starts here
        finally:
            dealer.close(linger=0)
        return True

    def _apply(self, batch: EventBatch, live: bool) -> None:
        state = self.state
        now = self.clock()
        self.index.apply(self.url, _with_rank(batch, state.endpoints.rank), now)
        state.expected = batch.sequence + 1
        state.last_ts = max(state.last_ts, batch.ts)
        state.batches += 1
        state.events += len(batch.events)
        state.skipped += sum(batch.skipped.values())
        if live:
            state.lag_s = max(now - batch.ts, 0.0)


def _with_rank(batch: EventBatch, rank: int) -> EventBatch:
    # The rank the router connected to names the engine, whatever the publisher stamped.
    if batch.rank == rank:
        return batch
    return EventBatch(batch.sequence, batch.ts, batch.events, rank, batch.skipped)


@dataclass
class ReplicaSubscription:
    endpoints: tuple[EventEndpoints, ...]
    ranks: list[RankSubscriber] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class EventSubscribers:
    """A subscription per replica that has event endpoints; follows the replica set's
    membership (`members_changed`, an on_members hook): a replica that leaves is unsubscribed."""

    def __init__(self, replicas: ReplicaSet, index: BlockIndex, config: Config) -> None:
        self.replicas = replicas
        self.index = index
        self.config = config
        self.context = zmq.asyncio.Context()
        self.subscriptions: dict[str, ReplicaSubscription] = {}

    def members_changed(self, weights: Mapping[str, float]) -> None:
        for url in [u for u in self.subscriptions if u not in weights]:
            self._stop(url)
        for url in weights:
            replica = self.replicas.get(url)
            endpoints = (
                tuple(event_endpoints(replica.spec, self.config))
                if replica is not None and replica.spec is not None
                else ()
            )
            current = self.subscriptions.get(url)
            if current is not None and current.endpoints == endpoints:
                continue
            if current is not None:
                self._stop(url)
            if endpoints:
                self._start(url, endpoints)

    def _start(self, url: str, endpoints: tuple[EventEndpoints, ...]) -> None:
        subscription = ReplicaSubscription(endpoints)
        for rank in endpoints:
            subscriber = RankSubscriber(
                url, rank, self.index, self.context, self.config.kv_events_topic
            )
            subscription.ranks.append(subscriber)
            subscription.tasks.append(
                asyncio.get_running_loop().create_task(
                    subscriber.run(), name=f"kv-events {url} rank {rank.rank}"
                )
            )
        self.subscriptions[url] = subscription

    def _stop(self, url: str) -> None:
        subscription = self.subscriptions.pop(url)
        for task in subscription.tasks:
            task.cancel()
        self.index.clear(url)

    async def close(self) -> None:
        tasks = [t for s in self.subscriptions.values() for t in s.tasks]
        self.subscriptions.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.context.term()

    def rows(self) -> Iterator[ReplicaEvents]:
        """Each subscribed replica's figures, for /metrics."""
        now = time.time()
        for url, subscription in self.subscriptions.items():
            yield self._row(url, subscription, now)

    def _row(self, url: str, subscription: ReplicaSubscription, now: float) -> ReplicaEvents:
        ranks = [r.state for r in subscription.ranks]
        stats = self.index.stats(url)
        lags = [s.lag_s for s in ranks if s.lag_s is not None]
        return ReplicaEvents(
            replica=url,
            ranks=len(ranks),
            connected=sum(1 for s in ranks if s.connected),
            lag_s=max(lags) if lags else None,
            batches=sum(s.batches for s in ranks),
            events=sum(s.events for s in ranks),
            gaps=sum(s.gaps for s in ranks),
            lost=sum(s.lost for s in ranks),
            restarts=sum(s.restarts for s in ranks),
            malformed=sum(s.malformed for s in ranks),
            skipped=sum(s.skipped for s in ranks),
            blocks=self.index.footprint(url),
            capacity=self.index.capacity(url),
            evictions_per_s=self.index.eviction_pressure(url, now),
            orphans=stats.orphans if stats else 0,
        )

    def status(self, url: str) -> dict[str, object]:
        """A replica's events for /router/replicas."""
        subscription = self.subscriptions.get(url)
        if subscription is None:
            return {"kv_events": None}
        row = self._row(url, subscription, time.time())
        return {
            "kv_events": {
                "connected": row.connected == row.ranks,
                "ranks": [
                    {
                        "rank": r.state.endpoints.rank,
                        "publisher": r.state.endpoints.publisher,
                        "replay": r.state.endpoints.replay or None,
                        "connected": r.state.connected,
                        "last_sequence": None if r.state.expected is None else r.state.expected - 1,
                        "lag_s": None if r.state.lag_s is None else round(r.state.lag_s, 4),
                        "batches": r.state.batches,
                        "gaps": r.state.gaps,
                        "lost": r.state.lost,
                        "restarts": r.state.restarts,
                    }
                    for r in subscription.ranks
                ],
                "blocks": row.blocks,
                "block_size": self.index.block_size(url),
                "capacity_blocks": row.capacity,
                "evictions_per_s": round(row.evictions_per_s, 3),
            }
        }
