"""The GPU benchmark's pure parts: reading vLLM's cache info, sizing the workload, the command."""

from __future__ import annotations

from pathlib import Path

from bench.real.gpu.host import (
    TokenWorkload,
    bench_command,
    cache_config_info,
    parse_args,
    size_users,
    sizing_of,
)
from bench.real.vllm_engines import EngineConfig, engine_command, engine_env

METRICS = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",\
gpu_memory_utilization="0.225",num_gpu_blocks="8192",num_cpu_blocks="None"} 1.0
vllm:num_requests_running{engine="0",model_name="gpu-1b"} 0.0
"""


def test_cache_config_info_reads_block_count_and_size() -> None:
    info = cache_config_info(METRICS)
    assert info["num_gpu_blocks"] == "8192"
    assert info["block_size"] == "16"


def test_sizing_overflows_one_engine_but_fits_all_under_session_affinity() -> None:
    workload = TokenWorkload()
    sizing = sizing_of([cache_config_info(METRICS)] * 4, workload, overflow=2.0, max_users=400)
    assert sizing.capacity_tokens == 8192 * 16
    assert sizing.per_engine_share_spread_policies > 1.0  # round robin: each engine thrashes
    assert sizing.per_engine_share_session_policy < 1.0  # session: each engine's share fits


def test_sizing_uses_the_smallest_engine_cache() -> None:
    small = cache_config_info(METRICS.replace('"8192"', '"1024"'))
    sizing = sizing_of([cache_config_info(METRICS), small], TokenWorkload(), 2.0, 400)
    assert sizing.num_gpu_blocks == 1024


def test_users_are_clamped_between_engine_count_and_maximum() -> None:
    workload = TokenWorkload()
    assert size_users(10, workload, engines=4, overflow=2.0, max_users=400) == 4
    assert size_users(10**9, workload, engines=4, overflow=2.0, max_users=400) == 400


def test_bench_command_converts_tokens_to_words_of_the_workload() -> None:
    args = parse_args(["--results-dir", "/tmp/x", "--bench-arg=--workload-seed=3"])
    command = bench_command(args, ["http://a:1", "http://b:2"], TokenWorkload(), 2.0, 50, 60.0)
    assert command[command.index("--replicas") + 1] == "http://a:1,http://b:2"
    assert command[command.index("--context-words") + 1] == str(TokenWorkload().context_tokens // 2)
    assert command[command.index("--answer-tokens") + 1] == str(TokenWorkload().answer_tokens)
    assert command[-1] == "--workload-seed=3"


def test_gpu_engine_command_shares_the_gpu_without_cpu_pinning() -> None:
    config = EngineConfig(
        model="gpu-1b",
        python_path=Path("/usr/bin/python3"),
        pin_cores=False,
        kv_cache_bytes=None,
        gpu_memory_utilization=0.225,
        enforce_eager=False,
    )
    command = engine_command(config, 8201)
    assert command[0] == "/usr/bin/python3"
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.225"
    assert "--kv-cache-memory-bytes" not in command
    assert "--enforce-eager" not in command
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_env(None)


def test_cpu_engine_command_is_unchanged_by_default() -> None:
    command = engine_command(EngineConfig(), 8101)
    assert "--kv-cache-memory-bytes" in command
    assert "--enforce-eager" in command
    assert "--gpu-memory-utilization" not in command
