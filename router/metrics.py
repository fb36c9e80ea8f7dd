"""The router's own Prometheus metrics, declared once; call sites only observe.

Names are `router_*`, never `vllm:*`, so they never collide with the replicas' own series in a
shared Prometheus. Values scraped from the replicas are exported by `ScrapedCollector`, which
reads the scraper's latest figures when Prometheus asks, so nothing is copied per scrape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# vLLM's own TTFT buckets, so the router's and the engines' histograms line up on a dashboard.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280)
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip

REQUESTS = Counter(
    "router_requests",
    "Requests finished, by replica that answered (or 'none'), key kind and HTTP status.",
    ["replica", "key_kind", "status"],
)
ROUTE_DECISIONS = Counter(
    "router_route_decisions",
    "Routing decisions by key kind and outcome (home, placed, found, spilled, sticky_spill, "
    "failover, no_key, balanced, stored_response).",
    ["key_kind", "outcome"],
)
HEALTHY = Gauge("router_replica_healthy", "1 if the replica takes traffic, else 0.", ["replica"])
TTFT = Histogram(
    "router_ttft_seconds",
    "Request received to first upstream body byte relayed to the client.",
    ["replica"],
    buckets=TTFT_BUCKETS,
)
DURATION = Histogram(
    "router_request_duration_seconds",
    "Request received to response finished.",
    buckets=DURATION_BUCKETS,
)
OVERHEAD = Histogram(
    "router_overhead_seconds",
    "Request received to upstream request sent: the router's own cost.",
    buckets=OVERHEAD_BUCKETS,
)
STORED_RESPONSES = Counter(
    "router_stored_responses",
    "Stored Response ids by event: learned (from a relayed response), located (asked the "
    "replicas), lost (every healthy replica answered 404), unavailable (its replica is ejected).",
    ["event"],
)
KV_LOOKUPS = Counter(
    "router_kv_lookups",
    "Engine-truth lookups of where a prompt is cached, by result (found: some replica holds part "
    "of it; nowhere; untokenized: no single prompt to look up).",
    ["result"],
)
KV_LOOKUP_SECONDS = Histogram(
    "router_kv_lookup_seconds",
    "Time to tokenize a prompt and look its blocks up in the index.",
    buckets=OVERHEAD_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "router_upstream_errors",
    "Upstream failures by replica and kind (connect, timeout, status, stream, stale_connection).",
    ["replica", "kind"],
)


@dataclass(frozen=True)
class ReplicaScrape:
    """What the scraper last read from one replica's /metrics."""

    replica: str
    hits_total: float
    queries_total: float
    hit_ratio: float | None  # over the last scrape interval; None before two scrapes
    running: float
    waiting: float
    kv_cache_usage: float


class ScrapedCollector(Collector):
    """Exports the scraper's latest figures; `source` is set by the app that owns the scraper."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[ReplicaScrape]] | None = None

    def collect(self) -> Iterator[Metric]:
        prefix = "router_replica_"
        ratio = GaugeMetricFamily(
            prefix + "prefix_cache_hit_ratio",
            "Prefix-cache hit ratio over the last scrape interval (token counters' deltas).",
            labels=["replica"],
        )
        hits = CounterMetricFamily(
            prefix + "prefix_cache_hits", "Replica's prefix-cache hit tokens.", labels=["replica"]
        )
        queries = CounterMetricFamily(
            prefix + "prefix_cache_queries",
            "Replica's prefix-cache queried tokens.",
            labels=["replica"],
        )
        running = GaugeMetricFamily(
            prefix + "requests_running", "Replica's running requests.", labels=["replica"]
        )
        waiting = GaugeMetricFamily(
            prefix + "requests_waiting", "Replica's waiting requests.", labels=["replica"]
        )
        kv = GaugeMetricFamily(
            prefix + "kv_cache_usage", "Replica's KV-cache usage (0-1).", labels=["replica"]
        )
        for scrape in self.source() if self.source else ():
            labels = [scrape.replica]
            if scrape.hit_ratio is not None:
                ratio.add_metric(labels, scrape.hit_ratio)
            hits.add_metric(labels, scrape.hits_total)
            queries.add_metric(labels, scrape.queries_total)
            running.add_metric(labels, scrape.running)
            waiting.add_metric(labels, scrape.waiting)
            kv.add_metric(labels, scrape.kv_cache_usage)
        yield from (ratio, hits, queries, running, waiting, kv)


SCRAPED = ScrapedCollector()
REGISTRY.register(SCRAPED)


@dataclass(frozen=True)
class ReplicaWork:
    """This router's account of one healthy replica (router/core/loads.py)."""

    replica: str
    inflight: int
    owed_prefill_tokens: float
    decoding: int
    prefill_rate: float  # estimated tokens per second, learned or configured
    prefill_base: float  # seconds
    footprint_tokens: float | None  # live conversations placed there (session policy)


class WorkCollector(Collector):
    """Exports the load accounting as Prometheus reads it: nothing is recorded per request."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[ReplicaWork]] | None = None

    def collect(self) -> Iterator[Metric]:
        prefix = "router_replica_"
        inflight = GaugeMetricFamily(
            "router_inflight_requests",
            "Requests in flight through this router.",
            labels=["replica"],
        )
        owed = GaugeMetricFamily(
            prefix + "owed_prefill_tokens",
            "Estimated prompt tokens the replica still has to prefill for this router's requests.",
            labels=["replica"],
        )
        decoding = GaugeMetricFamily(
            prefix + "decoding_requests",
            "This router's requests past their first token on the replica.",
            labels=["replica"],
        )
        rate = GaugeMetricFamily(
            prefix + "prefill_rate_tokens_per_second",
            "Prefill speed in estimated tokens/s, learned from times to first token.",
            labels=["replica"],
        )
        base = GaugeMetricFamily(
            prefix + "prefill_base_seconds",
            "Time to first token of an empty prompt on an idle replica, learned.",
            labels=["replica"],
        )
        footprint = GaugeMetricFamily(
            prefix + "live_footprint_tokens",
            "Estimated prompt tokens of the live conversations placed on the replica.",
            labels=["replica"],
        )
        for work in self.source() if self.source else ():
            labels = [work.replica]
            inflight.add_metric(labels, work.inflight)
            owed.add_metric(labels, work.owed_prefill_tokens)
            decoding.add_metric(labels, work.decoding)
            rate.add_metric(labels, work.prefill_rate)
            base.add_metric(labels, work.prefill_base)
            if work.footprint_tokens is not None:
                footprint.add_metric(labels, work.footprint_tokens)
        yield from (inflight, owed, decoding, rate, base, footprint)


WORK = WorkCollector()
REGISTRY.register(WORK)


class Children:
    """A labelled metric's children by label values, each looked up once: `labels()` takes a
    lock and builds its key on every call, and the request path calls it several times."""

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child

    def clear(self) -> None:
        self._children.clear()


requests = Children(REQUESTS)
decisions = Children(ROUTE_DECISIONS)
ttft = Children(TTFT)


def forget_replica(replica: str) -> None:
    """Drop a departed replica's series: with DNS discovery, pods that come back under new
    addresses would otherwise add series without bound."""
    for children in (requests, decisions, ttft):
        children.clear()  # they may hold the departed replica's: looked up afresh
    for metric, label_names in PER_REPLICA:
        for family in metric.collect():
            stale = {
                tuple(sample.labels[name] for name in label_names)
                for sample in family.samples
                if sample.labels.get("replica") == replica
            }
            for values in stale:
                with contextlib.suppress(KeyError):
                    metric.remove(*values)


PER_REPLICA: tuple[tuple[Counter | Gauge | Histogram, tuple[str, ...]], ...] = (
    (REQUESTS, ("replica", "key_kind", "status")),
    (HEALTHY, ("replica",)),
    (TTFT, ("replica",)),
    (UPSTREAM_ERRORS, ("replica", "kind")),
)


@dataclass(frozen=True)
class ReplicaEvents:
    """One replica's KV-event subscription and what its index holds (router/subscriber.py)."""

    replica: str
    ranks: int
    connected: int  # ranks whose publisher is connected
    lag_s: float | None  # receive time - engine time of the last live batch (worst rank)
    batches: int
    events: int
    gaps: int
    lost: int
    restarts: int
    malformed: int
    skipped: int
    blocks: dict[str, int]  # medium -> blocks held now
    capacity: int | None
    evictions_per_s: float
    orphans: int


class EventsCollector(Collector):
    """Exports the subscribers' figures when Prometheus asks; only current replicas appear."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[ReplicaEvents]] | None = None

    def collect(self) -> Iterator[Metric]:
        labels = ["replica"]
        connected = GaugeMetricFamily(
            "router_kv_events_connected",
            "1 if every data-parallel rank's KV-event publisher is connected, else 0.",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "router_kv_events_lag_seconds",
            "Arrival time minus the engine's timestamp of the last live event batch.",
            labels=labels,
        )
        counters = {
            name: CounterMetricFamily(f"router_kv_events_{name}", doc, labels=labels)
            for name, doc in (
                ("batches", "KV-event batches applied to the index."),
                ("events", "KV events applied to the index."),
                ("gaps", "Sequence gaps seen (each starts a catch-up through the replay socket)."),
                ("lost_batches", "Batches a gap lost for good (gone from the replay buffer)."),
                ("restarts", "Publisher restarts seen (the replica's blocks were forgotten)."),
                ("malformed", "Event messages that could not be read."),
                ("skipped", "Events left out: unknown types or malformed events."),
            )
        }
        blocks = GaugeMetricFamily(
            "router_kv_index_blocks",
            "Blocks the replica holds now by its events, per medium.",
            labels=["replica", "medium"],
        )
        capacity = GaugeMetricFamily(
            "router_kv_index_capacity_blocks",
            "Blocks indexed at most per engine and medium (vLLM's num_gpu_blocks once scraped).",
            labels=labels,
        )
        evictions = GaugeMetricFamily(
            "router_kv_index_evictions_per_second",
            "Blocks the replica removed per second (eviction pressure), 30 s moving average.",
            labels=labels,
        )
        orphans = CounterMetricFamily(
            "router_kv_index_orphan_blocks",
            "Stored blocks whose parent block was unknown (events missed): not indexed.",
            labels=labels,
        )
        for row in self.source() if self.source else ():
            values = [row.replica]
            connected.add_metric(values, 1.0 if row.connected == row.ranks else 0.0)
            if row.lag_s is not None:
                lag.add_metric(values, row.lag_s)
            for name, value in (
                ("batches", row.batches), ("events", row.events), ("gaps", row.gaps),
                ("lost_batches", row.lost), ("restarts", row.restarts),
                ("malformed", row.malformed), ("skipped", row.skipped),
            ):  # fmt: skip
                counters[name].add_metric(values, value)
            for medium, count in sorted(row.blocks.items()):
                blocks.add_metric([row.replica, medium], count)
            if row.capacity is not None:
                capacity.add_metric(values, row.capacity)
            evictions.add_metric(values, row.evictions_per_s)
            orphans.add_metric(values, row.orphans)
        yield from (connected, lag, *counters.values(), blocks, capacity, evictions, orphans)


EVENTS = EventsCollector()
REGISTRY.register(EVENTS)
