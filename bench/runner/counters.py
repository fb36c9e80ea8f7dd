"""The replicas' own counters around a measured run, read by the vLLM names the router reads.

The prefix-cache names (and the deprecated ones older vLLM exports instead) come from
router/vllm_names.py, so the benchmark and the router cannot disagree on what a replica reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.endpoints import get_text
from router import vllm_names

# Not read by the router: the report's load measure (prompt tokens each replica was sent).
PROMPT_TOKENS = "vllm:prompt_tokens_total"


@dataclass(frozen=True)
class ReplicaCounters:
    """One replica's cumulative /metrics counters at one moment."""

    queries: float
    hits: float
    prompt_tokens: float


def metric_totals(metrics_text: str) -> dict[str, float]:
    """Each sample's value summed over its label sets (a replica's engines), by sample name."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def parse_counters(metrics_text: str) -> ReplicaCounters:
    totals = metric_totals(metrics_text)

    def current(name: str) -> float:
        # The deprecated name counts only where the current one is absent, as in the scraper.
        deprecated = vllm_names.FALLBACKS.get(name, name)
        return totals.get(name, totals.get(deprecated, 0.0))

    return ReplicaCounters(
        queries=current(vllm_names.PREFIX_CACHE_QUERIES),
        hits=current(vllm_names.PREFIX_CACHE_HITS),
        prompt_tokens=totals.get(PROMPT_TOKENS, 0.0),
    )


def read_counters(replica: str) -> ReplicaCounters:
    return parse_counters(get_text(replica + "/metrics"))


def snapshot(replicas: Sequence[str]) -> dict[str, ReplicaCounters]:
    return {replica: read_counters(replica) for replica in replicas}


def counter_deltas(
    before: Mapping[str, ReplicaCounters], after: Mapping[str, ReplicaCounters]
) -> dict[str, ReplicaCounters]:
    deltas = {}
    for url, end in after.items():
        start = before.get(url)
        if start is not None:
            deltas[url] = ReplicaCounters(
                queries=end.queries - start.queries,
                hits=end.hits - start.hits,
                prompt_tokens=end.prompt_tokens - start.prompt_tokens,
            )
    return deltas
