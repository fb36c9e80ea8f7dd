"""Scrape each replica's vLLM /metrics: prefix-cache counters, queue depth, KV usage.

Fetches run concurrently; parsing runs in a worker thread, so a large exposition never holds up
the event loop. The hit ratio is a rate: counter deltas between two scrapes, summed over the
label sets (engines) of one replica, never the lifetime ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router import vllm_names as names
from router.config import Config
from router.core.block_index import BlockIndex
from router.core.loads import Loads
from router.metrics import ReplicaScrape
from router.replicas import ReplicaSet

log = logging.getLogger("router.scraper")

# Names without `_total`: the parser's sample names are matched after stripping it.
# Current vLLM V1 names first; the deprecated ones are read only when the current are absent.
QUERIES = tuple(
    n.removesuffix("_total")
    for n in (names.PREFIX_CACHE_QUERIES, names.DEPRECATED_PREFIX_CACHE_QUERIES)
)
HITS = tuple(
    n.removesuffix("_total") for n in (names.PREFIX_CACHE_HITS, names.DEPRECATED_PREFIX_CACHE_HITS)
)
RUNNING = (names.REQUESTS_RUNNING,)
WAITING = (names.REQUESTS_WAITING,)
KV_USAGE = (names.KV_CACHE_USAGE, names.DEPRECATED_KV_CACHE_USAGE)


@dataclass(frozen=True)
class VllmSample:
    """One replica's figures at one scrape, summed over its engines."""

    queries: float
    hits: float
    running: float
    waiting: float
    kv_usage: float
    num_gpu_blocks: int = 0  # from vllm:cache_config_info (0: not exported)
    block_size: int = 0


def parse_vllm_metrics(text: str) -> VllmSample:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    cache_config: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name == names.CACHE_CONFIG_INFO and family.samples and not cache_config:
            cache_config = family.samples[0].labels
        for sample in family.samples:
            # The parser names counter families without `_total`; samples keep it.
            name = sample.name.removesuffix("_total")
            if name.endswith(("_created", "_bucket", "_sum", "_count")):
                continue
            sums[name] = sums.get(name, 0.0) + sample.value
            counts[name] = counts.get(name, 0) + 1

    def first(names: tuple[str, ...], average: bool = False) -> float:
        for name in names:
            if name in sums:
                return sums[name] / counts[name] if average else sums[name]
        return 0.0

    return VllmSample(
        queries=first(QUERIES),
        hits=first(HITS),
        running=first(RUNNING),
        waiting=first(WAITING),
        kv_usage=first(KV_USAGE, average=True),  # a fraction per engine: average, not sum
        num_gpu_blocks=_whole(cache_config.get("num_gpu_blocks")),
        block_size=_whole(cache_config.get("block_size")),
    )


def _whole(label: str | None) -> int:
    try:
        return int(label or 0)
    except ValueError:
        return 0


@dataclass
class ScrapeState:
    sample: VllmSample
    at: float  # monotonic
    hit_ratio: float | None = None


def interval_hit_ratio(before: VllmSample, after: VllmSample) -> float | None:
    """Hits over queries between two scrapes; None when nothing was queried or counters reset."""
    queries = after.queries - before.queries
    hits = after.hits - before.hits
    if queries <= 0 or hits < 0:
        return None
    return hits / queries


class Scraper:
    def __init__(
        self,
        replicas: ReplicaSet,
        loads: Loads,
        session: aiohttp.ClientSession,
        config: Config,
        blocks: BlockIndex | None = None,
    ) -> None:
        self.replicas = replicas
        self.blocks = blocks  # told each engine's KV capacity, its bound
        self.kv_pressure = config.kv_pressure  # feed the placement each replica's evictions
        self.loads = loads
        self.session = session
        self.interval = config.scrape_interval
        self.timeout = aiohttp.ClientTimeout(total=config.scrape_timeout)
        self.states: dict[str, ScrapeState] = {}

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(url) for url in list(self.replicas.replicas)))
        for url in list(self.states):  # departed replicas
            if url not in self.replicas.replicas:
                del self.states[url]

    async def scrape(self, url: str) -> None:
        try:
            async with self.session.get(url + "/metrics", timeout=self.timeout) as response:
                if response.status != 200:
                    return
                text = await response.text()
            sample = await asyncio.to_thread(parse_vllm_metrics, text)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
            log.debug("scrape of %s failed: %s", url, error)
            return
        previous = self.states.get(url)
        state = ScrapeState(sample, time.monotonic())
        if previous is not None:
            ratio = interval_hit_ratio(previous.sample, sample)
            # Keep the last ratio through idle intervals rather than flapping to "no data".
            state.hit_ratio = ratio if ratio is not None else previous.hit_ratio
        self.states[url] = state
        self.loads.set_scraped(url, sample.running, sample.waiting)
        if self.blocks is not None and sample.num_gpu_blocks:
            self.blocks.set_cache_config(url, sample.num_gpu_blocks, sample.block_size or None)
        if self.blocks is not None and self.kv_pressure and url in self.blocks.replicas:
            # The subscribers stamp event batches with the wall clock.
            self.loads.set_evictions(url, self.blocks.eviction_pressure(url, time.time()))

    def latest(self) -> Iterator[ReplicaScrape]:
        for url, state in self.states.items():
            s = state.sample
            yield ReplicaScrape(
                url, s.hits, s.queries, state.hit_ratio, s.running, s.waiting, s.kv_usage
            )

    def status(self, url: str, now: float) -> dict[str, object]:
        state = self.states.get(url)
        if state is None:
            return {"last_scrape_age_s": None}
        return {
            "last_scrape_age_s": round(now - state.at, 3),
            "prefix_cache_hit_ratio": state.hit_ratio,
            "prefix_cache_hits_total": state.sample.hits,
            "prefix_cache_queries_total": state.sample.queries,
            "requests_running": state.sample.running,
            "requests_waiting": state.sample.waiting,
            "kv_cache_usage": state.sample.kv_usage,
        }

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # one bad round must not end the loop
                await self.scrape_all()
            await asyncio.sleep(self.interval)
