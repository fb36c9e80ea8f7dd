from __future__ import annotations

from router.scraper import VllmSample, interval_hit_ratio, parse_vllm_metrics

CURRENT = """
# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 500.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 600.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 150.0
# HELP vllm:num_requests_running Running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:kv_cache_usage_perc Usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# HELP vllm:time_to_first_token_seconds TTFT.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 5.0
vllm:time_to_first_token_seconds_count{model_name="m"} 5.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.3
"""

DEPRECATED = """
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{model_name="m"} 200.0
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{model_name="m"} 50.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
"""


def test_counters_are_summed_over_engines_of_one_replica() -> None:
    sample = parse_vllm_metrics(CURRENT)
    assert sample == VllmSample(queries=1500, hits=750, running=4, waiting=2, kv_usage=0.375)


def test_deprecated_names_of_older_vllm_are_read() -> None:
    sample = parse_vllm_metrics(DEPRECATED)
    assert (sample.queries, sample.hits, sample.kv_usage) == (200, 50, 0.75)


def test_hit_ratio_is_a_rate_between_scrapes_not_a_lifetime_ratio() -> None:
    before = VllmSample(queries=1000, hits=900, running=0, waiting=0, kv_usage=0)
    after = VllmSample(queries=1100, hits=910, running=0, waiting=0, kv_usage=0)
    assert interval_hit_ratio(before, after) == 0.1


def test_no_queries_or_a_counter_reset_gives_no_ratio() -> None:
    same = VllmSample(queries=10, hits=5, running=0, waiting=0, kv_usage=0)
    reset = VllmSample(queries=20, hits=0, running=0, waiting=0, kv_usage=0)
    assert interval_hit_ratio(same, same) is None
    assert interval_hit_ratio(same, reset) is None
