"""Measure a real vLLM CPU engine and fit the CPU mock's step-time profile to it.

The mock models one engine step as

    step = step_base + per_prefill_token * prefill_tokens
           + per_decode_seq * decoding_seqs + per_context_token * context_tokens_read_in_decode

This script measures, against one engine pinned to one core (the client uses the other):
TTFT of prompts of ~64..1900 uncached tokens (fresh random text every time, so nothing is cached)
and of the same prompts fully cached, and the inter-token time while 1, 4 and 8 sequences decode
together at a short and a long context. It fits the prefill line to the TTFTs and the decode
plane to the inter-token times by least squares on relative errors, prints a table, and ends with
one JSON line.

    .venv/bin/python -m bench.real.fit_cpu_profile --model small            # starts its own engine
    .venv/bin/python -m bench.real.fit_cpu_profile --url http://127.0.0.1:8101 --model small

On a GPU (bench/real/gpu/host.py) the same fit runs against a real engine with larger sizes, e.g.
``--prefill-targets 256,1024,2048,4096,8000 --decode-batches 1,8,32 --decode-contexts 256,4096``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openai

from bench.load.timed_stream import StreamResult, sdk_client, stream_chat
from bench.real.vllm_engines import EngineConfig, running_engines, visible_logit_bias

PREFILL_TARGETS = (64, 128, 256, 512, 768, 1024, 1400, 1900)
DECODE_BATCHES = (1, 4, 8)
DECODE_CONTEXTS = (64, 1024)
DECODE_TOKENS = 96
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "du", "ing", "est", "on")


@dataclass
class Client:
    """Sends chat requests for one served model, keeping greedy answers visible."""

    url: str
    model: str
    logit_bias: dict[str, float]
    tokens_per_word: float = 1.0
    sdk: openai.OpenAI = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sdk = sdk_client(self.url)  # one client: the decode measurements share it

    def chat(self, text: str, max_tokens: int) -> StreamResult:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "logit_bias": self.logit_bias,
        }
        return stream_chat(self.sdk, body)

    def fresh_prompt(self, tokens: int) -> str:
        """Random text of about ``tokens`` prompt tokens that the engine has never seen."""
        rng = random.Random(uuid.uuid4().int)
        words = max(1, round(tokens / self.tokens_per_word))
        return " ".join("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3))) for _ in range(words))

    def calibrate(self) -> None:
        samples = [self.chat(self.fresh_prompt(400), max_tokens=1) for _ in range(3)]
        self.tokens_per_word = statistics.median(s.prompt_tokens / 400 for s in samples)


@dataclass(frozen=True)
class PrefillPoint:
    target: int
    prompt_tokens: int
    uncached_tokens: int
    cached_tokens: int
    ttft_s: float  # median


@dataclass(frozen=True)
class DecodePoint:
    sequences: int
    context_tokens: float  # mean tokens of context per sequence while decoding
    inter_token_s: float  # median


def measure_prefill(
    client: Client, repeats: int, targets: Sequence[int] = PREFILL_TARGETS
) -> list[PrefillPoint]:
    """Median TTFT per target size, uncached (fresh text) and fully cached (same text again)."""
    uncached: dict[int, list[StreamResult]] = {target: [] for target in targets}
    cached: dict[int, list[StreamResult]] = {target: [] for target in targets}
    for _ in range(repeats):
        # Sizes shuffled in every round, so slow drift does not line up with prompt length.
        for target in random.sample(list(targets), len(targets)):
            text = client.fresh_prompt(target)
            uncached[target].append(client.chat(text, max_tokens=1))
            cached[target].append(client.chat(text, max_tokens=1))
    points = []
    for target in targets:
        for results in (uncached[target], cached[target]):
            prompt = round(statistics.median(r.prompt_tokens for r in results))
            hit = round(statistics.median(r.cached_tokens for r in results))
            ttft = statistics.median(r.ttft_s for r in results)
            points.append(PrefillPoint(target, prompt, prompt - hit, hit, ttft))
    return points


def measure_decode(
    client: Client,
    repeats: int,
    batches: Sequence[int] = DECODE_BATCHES,
    contexts: Sequence[int] = DECODE_CONTEXTS,
) -> list[DecodePoint]:
    """Median inter-token time with ``batches`` sequences decoding together, at ``contexts``."""
    points = []
    for context in contexts:
        for sequences in batches:
            gaps: list[float] = []
            prompt_tokens: list[int] = []
            for _ in range(repeats):
                prompts = [client.fresh_prompt(context) for _ in range(sequences)]
                results = _concurrently(
                    [functools.partial(client.chat, text, DECODE_TOKENS) for text in prompts]
                )
                gaps.extend(r.inter_token_s for r in results)
                prompt_tokens.extend(r.prompt_tokens for r in results)
            mean_context = statistics.mean(prompt_tokens) + DECODE_TOKENS / 2
            points.append(DecodePoint(sequences, mean_context, statistics.median(gaps)))
    return points


def _concurrently(calls: Sequence[Callable[[], StreamResult]]) -> list[StreamResult]:
    results: list[StreamResult | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        start.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [result for result in results if result is not None]


def relative_lstsq(rows: list[list[float]], observed: list[float]) -> list[float]:
    """Least squares on relative residuals: small and large observations weigh alike."""
    a = np.array(rows, dtype=float)
    y = np.array(observed, dtype=float)
    solution, *_ = np.linalg.lstsq(a / y[:, None], np.ones_like(y), rcond=None)
    return [float(value) for value in solution]


def fit(prefill: list[PrefillPoint], decode: list[DecodePoint]) -> dict[str, float]:
    """Fit TTFT = ttft_base + per_prefill_token * uncached, and the decode step plane."""
    ttft_base, per_prefill_token = relative_lstsq(
        [[1.0, p.uncached_tokens] for p in prefill], [p.ttft_s for p in prefill]
    )
    step_base, per_decode_seq, per_context_token = relative_lstsq(
        [[1.0, d.sequences, d.sequences * d.context_tokens] for d in decode],
        [d.inter_token_s for d in decode],
    )
    return {
        "step_base": step_base,
        "per_prefill_token": per_prefill_token,
        "per_decode_seq": per_decode_seq,
        "per_context_token": per_context_token,
        # TTFT's intercept beyond one bare step: HTTP, tokenization, scheduling, detokenization.
        "ttft_overhead": ttft_base - step_base,
    }


def print_table(
    prefill: list[PrefillPoint], decode: list[DecodePoint], params: dict[str, float]
) -> None:
    ttft_base = params["step_base"] + params["ttft_overhead"]
    print("| prompt tokens | cached | uncached | TTFT median ms | fitted ms |")
    print("|---:|---:|---:|---:|---:|")
    for p in prefill:
        fitted = ttft_base + params["per_prefill_token"] * p.uncached_tokens
        print(
            f"| {p.prompt_tokens} | {p.cached_tokens} | {p.uncached_tokens} "
            f"| {p.ttft_s * 1e3:.1f} | {fitted * 1e3:.1f} |"
        )
    print()
    print("| decoding seqs | mean context tokens | inter-token median ms | fitted ms |")
    print("|---:|---:|---:|---:|")
    for d in decode:
        fitted = (
            params["step_base"]
            + params["per_decode_seq"] * d.sequences
            + params["per_context_token"] * d.sequences * d.context_tokens
        )
        print(
            f"| {d.sequences} | {d.context_tokens:.0f} | {d.inter_token_s * 1e3:.2f} "
            f"| {fitted * 1e3:.2f} |"
        )
    print()


@contextmanager
def engine_url(args: argparse.Namespace) -> Iterator[tuple[str, EngineConfig]]:
    config = EngineConfig(
        model=args.model,
        count=1,
        base_port=args.port,
        cores=(args.core,),
        log_dir=args.log_dir,
        dtype=args.dtype,
    )
    if args.url:
        yield args.url, config
        return
    with running_engines(config) as fleet:
        yield fleet.urls[0], config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit the CPU mock's profile to a real engine.")
    parser.add_argument("--model", default="small", help="a folder under .models")
    parser.add_argument("--url", default=None, help="a running engine; default: start one")
    parser.add_argument("--port", type=int, default=8151, help="port of the engine started here")
    parser.add_argument("--core", type=int, default=1, help="the engine's core")
    parser.add_argument("--dtype", default="bfloat16", help="of the engine started here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--log-dir", type=Path, default=Path("bench/results/vllm-logs"))
    parser.add_argument("--prefill-targets", type=_ints, default=PREFILL_TARGETS)
    parser.add_argument("--decode-batches", type=_ints, default=DECODE_BATCHES)
    parser.add_argument("--decode-contexts", type=_ints, default=DECODE_CONTEXTS)
    parser.add_argument("--json-out", type=Path, default=None, help="also write the fit here")
    args = parser.parse_args(argv)

    with engine_url(args) as (url, config):
        # Once the engine runs (it inherits affinity), keep the client off the engine's core.
        other_cores = set(range(os.cpu_count() or 1)) - {args.core}
        if other_cores:
            os.sched_setaffinity(0, other_cores)
        client = Client(url, config.name, visible_logit_bias(config))
        for _ in range(3):  # warm-up: first requests pay one-off costs
            client.chat(client.fresh_prompt(256), max_tokens=8)
        client.calibrate()
        started = time.monotonic()
        prefill = measure_prefill(client, args.repeats, args.prefill_targets)
        decode = measure_decode(
            client, args.decode_repeats, args.decode_batches, args.decode_contexts
        )
        took = time.monotonic() - started
    params = fit(prefill, decode)
    print(f"model {args.model} at {url}; measured in {took:.0f}s", file=sys.stderr)
    print_table(prefill, decode, params)
    for name, value in params.items():
        print(f"{name:>18} = {value * 1e3:9.4f} ms")
    result = {"model": args.model, "dtype": args.dtype, "url": url, "unit": "seconds", **params}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


if __name__ == "__main__":
    main()
