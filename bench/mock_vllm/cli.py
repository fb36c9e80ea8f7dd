"""Command line: every MockOptions field as a flag; profile values are the defaults."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

from .options import MockOptions
from .profiles import PROFILES
from .serving import run


def parse_args(argv: Sequence[str] | None = None) -> MockOptions:
    """MockOptions from command-line arguments."""
    d = MockOptions()
    profiles = "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())
    parser = argparse.ArgumentParser(
        prog="python -m bench.mock_vllm",
        description="CPU mock of a vLLM OpenAI server with a modelled prefix cache and timing.",
    )
    parser.add_argument("--host", default=d.host, help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="port, 0 for any (%(default)s)")
    parser.add_argument(
        "--model", default=d.model, help="served model name, as in vLLM's --served-model-name"
    )
    parser.add_argument(
        "--profile",
        default=d.profile,
        choices=sorted(PROFILES),
        help=f"timing profile ({profiles}); default %(default)s",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=d.speed,
        help="divide every modelled time by this (%(default)s)",
    )
    parser.add_argument("--kv-blocks", type=int, help="KV cache capacity in blocks (profile)")
    parser.add_argument("--block-size", type=int, help="tokens per KV block (profile: 16)")
    parser.add_argument("--max-num-seqs", type=int, help="most running requests (profile)")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, help="prefill token budget per step (profile)"
    )
    parser.add_argument("--max-model-len", type=int, help="longest prompt + answer (profile)")
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the generated answers (%(default)s)"
    )
    parser.add_argument(
        "--min-answer-tokens",
        type=int,
        default=d.min_answer_tokens,
        help="shortest natural answer, before max_tokens (%(default)s)",
    )
    parser.add_argument(
        "--max-answer-tokens",
        type=int,
        default=d.max_answer_tokens,
        help="longest natural answer, before max_tokens (%(default)s)",
    )
    parser.add_argument(
        "--kv-events-config",
        help='publish KV-cache events as vLLM does, e.g. \'{"enable_kv_cache_events": true, '
        '"publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": '
        '"tcp://*:5558"}\'',
    )
    args = parser.parse_args(argv)
    return MockOptions(**{k.replace("-", "_"): v for k, v in vars(args).items()})


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.mock_vllm`."""
    options = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(options)
