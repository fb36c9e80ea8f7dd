"""The vLLM metric names the scraper reads, in one place.

The scraper imports these; deploy/check.py checks the Grafana dashboard against them, so a
dashboard query on a vLLM series the router does not know about fails CI.
"""

from __future__ import annotations

# vLLM V1 names: prefix-cache counters are in tokens.
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits_total"
REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"

# Older vLLM exports these instead; read only when the current name is absent.
DEPRECATED_PREFIX_CACHE_QUERIES = "vllm:gpu_prefix_cache_queries_total"
DEPRECATED_PREFIX_CACHE_HITS = "vllm:gpu_prefix_cache_hits_total"
DEPRECATED_KV_CACHE_USAGE = "vllm:gpu_cache_usage_perc"

# Current name -> deprecated name it replaces.
FALLBACKS: dict[str, str] = {
    PREFIX_CACHE_QUERIES: DEPRECATED_PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS: DEPRECATED_PREFIX_CACHE_HITS,
    KV_CACHE_USAGE: DEPRECATED_KV_CACHE_USAGE,
}

CURRENT: tuple[str, ...] = (
    PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    KV_CACHE_USAGE,
)
DEPRECATED: tuple[str, ...] = tuple(FALLBACKS.values())

# Read for the KV-event index's bound: labels num_gpu_blocks and block_size.
CACHE_CONFIG_INFO = "vllm:cache_config_info"

# Not read by the scraper, but a vLLM series the dashboard may chart next to the router's TTFT.
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
DASHBOARD_ONLY: tuple[str, ...] = (TTFT_HISTOGRAM,)
