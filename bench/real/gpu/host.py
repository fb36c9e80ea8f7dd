"""The GPU benchmark on one host: N real vLLM engines on one GPU, a profile fit, then bench.runner.

Run by bench/real/gpu/run_on_host.sh after it has unpacked the vLLM bundle onto PYTHONPATH
(docs/gpu.md). Steps, all inside one deadline so that it fits one 10-minute call:

1. record the environment (GPU, torch, vLLM and the versions of the packages vLLM needs);
2. build the random-weight model (bench/real/tiny_model.py ``--size gpu-1b``) unless it is there;
3. start the engines (bench/real/vllm_engines.py), each with a share of the GPU and prefix caching;
4. read each engine's KV capacity (``vllm:cache_config_info`` on /metrics) and size the workload
   so that the live sessions overflow one engine's cache but fit in all of them together;
5. measure prefill and decode step times on engine 0 (bench/real/fit_cpu_profile.py);
6. run ``python -m bench.runner --replicas ...`` for the policies, with what time is left;
7. stop every engine (also on error, Ctrl-C or SIGTERM).

    python3 -m bench.real.gpu.host --engines 4 --results-dir bench/results/gpu-2026-11-21
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench import ROOT
from bench.endpoints import cache_config_info, get_text, http_json
from bench.load.workload import Workload, first_message
from bench.real.vllm_engines import (
    DEFAULT_MODELS,
    EngineConfig,
    EngineStartError,
    reset_prefix_cache,
    running_engines,
)

# What vLLM 0.26.0 declares (Requires-Dist) among the packages the host already has, checked here
# and written to env.json, so a failed start can be matched against a version mismatch.
VLLM_HOST_REQUIREMENTS = {
    "torch": "==2.11.0",
    "transformers": ">=5.5.3",
    "tokenizers": ">=0.21.1",
    "safetensors": ">=0.6.2",
    "aiohttp": ">=3.13.3",
    "protobuf": ">=5.29.6 (not 6.30-6.33.4)",
    "setuptools": ">=77.0.3,<81",
    "prometheus-client": ">=0.18.0",
    "tiktoken": ">=0.6.0",
    "opencv-python-headless": ">=4.13.0",
    "numpy": "(any; numba==0.65 is not carried)",
    "uvloop": "(via uvicorn[standard])",
    "pyzmq": ">=25 (carried)",
    "pydantic": ">=2.12 (carried)",
    "fastapi": ">=0.133,<0.137 (carried)",
}
TEMPLATE_TOKENS_PER_MESSAGE = 6  # <|im_start|>role\n ... <|im_end|>\n


@dataclass(frozen=True)
class TokenWorkload:
    """bench.load.workload's knobs in real tokens of the served model's tokenizer (that one's
    lengths are words; bench_command converts)."""

    system_tokens: int = 512
    context_tokens: int = 3000
    followup_tokens: int = 120
    answer_tokens: int = 128
    turns: int = 6
    think_time: float = 2.0

    def session_tokens(self) -> int:
        """Tokens one finished session keeps in the prefix cache."""
        messages = 1 + 2 * self.turns
        return (
            self.system_tokens
            + self.context_tokens
            + (self.turns - 1) * self.followup_tokens
            + self.turns * self.answer_tokens
            + messages * TEMPLATE_TOKENS_PER_MESSAGE
        )


@dataclass(frozen=True)
class Sizing:
    engines: int
    num_gpu_blocks: int  # the smallest engine's
    block_size: int
    capacity_tokens: int  # of one engine
    session_tokens: int
    sessions_per_engine_cache: float
    overflow: float
    users: int
    per_engine_share_session_policy: float  # of one engine's cache, under session affinity
    per_engine_share_spread_policies: float  # round robin: every engine sees every session


def size_users(
    capacity_tokens: int, workload: TokenWorkload, engines: int, overflow: float, max_users: int
) -> int:
    """Live sessions (one per user) whose prefixes fill ``overflow`` times one engine's cache."""
    users = math.ceil(overflow * capacity_tokens / workload.session_tokens())
    return max(engines, min(max_users, users))


def sizing_of(
    cache_infos: list[dict[str, str]],
    workload: TokenWorkload,
    overflow: float,
    max_users: int,
) -> Sizing:
    blocks = min(int(float(info["num_gpu_blocks"])) for info in cache_infos)
    block_size = int(cache_infos[0]["block_size"])
    capacity = blocks * block_size
    session = workload.session_tokens()
    engines = len(cache_infos)
    users = size_users(capacity, workload, engines, overflow, max_users)
    return Sizing(
        engines=engines,
        num_gpu_blocks=blocks,
        block_size=block_size,
        capacity_tokens=capacity,
        session_tokens=session,
        sessions_per_engine_cache=capacity / session,
        overflow=overflow,
        users=users,
        per_engine_share_session_policy=users * session / engines / capacity,
        per_engine_share_spread_policies=users * session / capacity,
    )


def tokens_per_word(url: str, model: str) -> float:
    """How many tokens the served tokenizer makes of one word of bench.load.workload's text."""
    sample = Workload(context_words=2000)
    text = first_message(sample, 0, 0)
    answer = http_json("POST", f"{url}/tokenize", {"model": model, "prompt": text})
    return float(answer["count"]) / max(1, len(text.split()))


def environment() -> dict[str, Any]:
    """GPU, torch, vLLM and the versions of what vLLM needs from the host."""
    import torch

    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    env["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    versions: dict[str, str | None] = {}
    for name in [*VLLM_HOST_REQUIREMENTS, "vllm", "uvicorn", "openai", "locust", "gevent"]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    env["vllm_requires"] = VLLM_HOST_REQUIREMENTS
    return env


def build_model(size: str, models_dir: Path) -> Path:
    out = models_dir / size
    if not (out / "config.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "real" / "tiny_model.py"),
                "--size",
                size,
                "--out",
                str(out),
            ],
            check=True,
        )
    return out


def fit_profile(url: str, model: str, out: Path, timeout_s: float) -> None:
    """Prefill and decode step times of one real engine, fitted as the mock's profile."""
    command = [
        sys.executable,
        "-m",
        "bench.real.fit_cpu_profile",
        "--url",
        url,
        "--model",
        model,
        "--repeats",
        "3",
        "--decode-repeats",
        "2",
        "--prefill-targets",
        "256,1024,2048,4096,7000",
        "--decode-batches",
        "1,8,32",
        "--decode-contexts",
        "256,4096",
        "--json-out",
        str(out / "profile.json"),
    ]
    with (out / "profile.md").open("w") as table:
        subprocess.run(command, check=True, stdout=table, timeout=timeout_s, cwd=ROOT)


def bench_command(
    args: argparse.Namespace,
    urls: list[str],
    workload: TokenWorkload,
    ratio: float,
    users: int,
    duration_s: float,
) -> list[str]:
    """``python -m bench.runner`` with the workload in words (the runner's unit) for real tokens."""

    def words(tokens: int) -> str:
        return str(max(1, round(tokens / ratio)))

    return [
        sys.executable,
        "-m",
        "bench.runner",
        "--replicas",
        ",".join(urls),
        "--policies",
        args.policies,
        "--model",
        args.size,
        "--users",
        str(users),
        "--spawn-rate",
        str(max(1.0, users / 10)),
        "--duration",
        f"{duration_s:.0f}",
        "--system-words",
        words(workload.system_tokens),
        "--context-words",
        words(workload.context_tokens),
        "--followup-words",
        words(workload.followup_tokens),
        "--answer-tokens",
        str(workload.answer_tokens),
        "--turns",
        str(workload.turns),
        "--think-time",
        str(workload.think_time),
        "--results-dir",
        str(args.results_dir),
        *args.bench_arg,
    ]


def run_group(command: list[str], log: IO[bytes], timeout_s: float) -> int:
    """Run ``command`` in its own process group; on timeout or Ctrl-C stop the whole group
    (bench.runner's router and locust too), then re-raise."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return process.wait(timeout=timeout_s)
    except BaseException:
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait_s)
                break
        raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--engines", type=int, default=4, help="vLLM engines on the one GPU")
    p.add_argument("--size", default="gpu-1b", help="tiny_model.py size to build and serve")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--base-port", type=int, default=8201)
    p.add_argument("--gpu-share", type=float, default=0.9, help="split over the engines")
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        default=4.0,
        help="KV cache per engine; 0: vLLM sizes it from free memory (engines then start in turn)",
    )
    p.add_argument("--max-model-len", type=int, default=16384)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--cuda-graphs", action="store_true", help="no --enforce-eager (slower start)")
    p.add_argument(
        "--attention-backend",
        default=None,
        help="e.g. TRITON_ATTN if FlashAttention 3 fails (vLLM's --attention-backend)",
    )
    p.add_argument("--engine-arg", action="append", default=[], help="extra flag for every engine")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--policies", default="session,round_robin,least_loaded,prefix")
    p.add_argument("--system-tokens", type=int, default=TokenWorkload.system_tokens)
    p.add_argument("--context-tokens", type=int, default=TokenWorkload.context_tokens)
    p.add_argument("--followup-tokens", type=int, default=TokenWorkload.followup_tokens)
    p.add_argument("--answer-tokens", type=int, default=TokenWorkload.answer_tokens)
    p.add_argument("--turns", type=int, default=TokenWorkload.turns)
    p.add_argument("--think-time", type=float, default=TokenWorkload.think_time)
    p.add_argument("--overflow", type=float, default=2.0, help="live sessions / one engine's cache")
    p.add_argument("--max-users", type=int, default=400)
    p.add_argument("--users", type=int, default=0, help="override the sizing")
    p.add_argument("--duration", type=float, default=90.0, help="most seconds per policy")
    p.add_argument("--min-duration", type=float, default=30.0)
    p.add_argument("--per-policy-overhead", type=float, default=25.0, help="router, reset, report")
    p.add_argument("--no-fit", action="store_true", help="skip the profile measurement")
    p.add_argument("--deadline-s", type=float, default=540.0, help="from start to engines stopped")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results" / "gpu")
    p.add_argument("--bench-arg", action="append", default=[], help="extra flag for bench.runner")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.deadline_s
    out = args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def note(message: str) -> None:
        print(f"[gpu-host {time.monotonic() - started:6.1f}s] {message}", flush=True)

    env = environment()
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    note(f"environment: {json.dumps({k: v for k, v in env.items() if k != 'vllm_requires'})}")
    model_dir = build_model(args.size, args.models_dir)
    note(f"model ready: {model_dir}")

    kv_bytes = int(args.kv_cache_gib * 2**30) if args.kv_cache_gib > 0 else None
    config = EngineConfig(
        model=args.size,
        count=args.engines,
        base_port=args.base_port,
        models_dir=args.models_dir,
        log_dir=out / "engine-logs",
        max_model_len=args.max_model_len,
        block_size=16,
        kv_cache_bytes=kv_bytes,
        max_num_seqs=args.max_num_seqs,
        startup_timeout_s=args.startup_timeout,
        python_path=Path(sys.executable),
        pin_cores=False,
        gpu_memory_utilization=round(args.gpu_share / args.engines, 3),
        enforce_eager=not args.cuda_graphs,
        one_at_a_time=kv_bytes is None,
        extra_args=tuple(
            args.engine_arg
            + (["--attention-backend", args.attention_backend] if args.attention_backend else [])
        ),
    )
    workload = TokenWorkload(
        args.system_tokens,
        args.context_tokens,
        args.followup_tokens,
        args.answer_tokens,
        args.turns,
        args.think_time,
    )
    try:
        with running_engines(config) as fleet:
            note(f"{args.engines} engines healthy: {', '.join(fleet.urls)}")
            infos = [cache_config_info(get_text(f"{url}/metrics")) for url in fleet.urls]
            sizing = sizing_of(infos, workload, args.overflow, args.max_users)
            users = args.users or sizing.users
            ratio = tokens_per_word(fleet.urls[0], config.name)
            sizing_record = {
                "sizing": asdict(sizing),
                "users": users,
                "workload_tokens": asdict(workload),
                "tokens_per_word": ratio,
                "cache_config_info": infos,
                "engine": asdict(config) | {"python_path": str(config.python)},
            }
            (out / "sizing.json").write_text(json.dumps(sizing_record, indent=2, default=str))
            note(
                f"sizing: one engine holds {sizing.capacity_tokens} tokens "
                f"({sizing.num_gpu_blocks} blocks x {sizing.block_size}); a session keeps "
                f"{sizing.session_tokens} tokens, so {sizing.sessions_per_engine_cache:.1f} "
                f"sessions per engine; {users} users fill "
                f"{sizing.per_engine_share_session_policy:.0%} of each cache under session "
                f"affinity and {sizing.per_engine_share_spread_policies:.0%} when spread; "
                f"{ratio:.2f} tokens per workload word"
            )
            if not args.no_fit:
                budget = max(30.0, min(150.0, deadline - time.monotonic() - 200))
                try:
                    fit_profile(fleet.urls[0], config.name, out, budget)
                    note(f"profile: {(out / 'profile.json').read_text().strip()}")
                except (subprocess.SubprocessError, OSError) as error:
                    note(f"profile fit failed ({error}); going on with the benchmark")
                reset_prefix_cache(fleet.urls[0])
            policies = [name for name in args.policies.split(",") if name]
            left = deadline - time.monotonic() - 30  # stopping the engines
            duration = min(args.duration, left / max(1, len(policies)) - args.per_policy_overhead)
            if duration < args.min_duration:
                note(f"only {left:.0f}s left: {duration:.0f}s per policy is too short; stopping")
                sys.exit(3)
            command = bench_command(args, fleet.urls, workload, ratio, users, duration)
            note(f"bench: {' '.join(command)}")
            with (out / "bench-run.log").open("w") as log:
                code = run_group(command, log, max(60.0, deadline - time.monotonic() - 20))
            note(f"bench.runner exited {code}; log {out / 'bench-run.log'}")
    except EngineStartError as error:
        sys.exit(f"could not start engines: {error}")
    except subprocess.TimeoutExpired:
        sys.exit("bench.runner ran past the deadline")
    except KeyboardInterrupt:
        sys.exit("stopped")
    note("engines stopped")


if __name__ == "__main__":
    main()
