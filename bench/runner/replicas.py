"""The replicas of a run: the CPU mocks the runner starts, and what it asks of any replica."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.endpoints import cache_config_info, free_port, get_text, http, http_json, wait_until_up
from bench.load.workload import OPENING, Workload, system_prompt
from bench.mock_vllm.tokenizer import TOKENIZER_FOLDER
from bench.runner.counters import read_counters
from bench.runner.processes import Processes
from bench.runner.report import BLOCK_SIZE
from bench.runner.sizes import Size


@dataclass(frozen=True)
class EngineTruth:
    """What a router needs to read the replicas' KV-cache events: each replica's `--replica`
    spec with its event endpoints, and the served model's tokenizer folder."""

    specs: dict[str, str]
    tokenizer: str


def start_mocks(
    procs: Processes, size: Size, profile: str, folder: Path, events: bool = True
) -> tuple[list[str], EngineTruth | None]:
    """The mocks, each publishing its KV-cache events as vLLM does when `events` (a publisher
    serializes every block it stores: CPU the mocks spend only when a target reads them)."""
    urls, specs = [], {}
    for i in range(size.mocks):
        port = free_port()
        publisher, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        kv_events = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": publisher,
            "replay_endpoint": replay,
            "topic": "kv",
        }
        specs[f"http://127.0.0.1:{port}"] = (
            f"http://127.0.0.1:{port}#kv_events={publisher}&kv_replay={replay}"
        )
        cmd = [
            sys.executable,
            "-m",
            "bench.mock_vllm",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--profile",
            profile,
            "--speed",
            str(size.speed),
            "--kv-blocks",
            str(size.kv_blocks),
            "--seed",
            str(i),
            *(("--kv-events-config", json.dumps(kv_events)) if events else ()),
        ]
        proc = procs.start(f"mock-{i}", cmd, folder / f"mock-{i}.log")
        urls.append((f"http://127.0.0.1:{port}", proc))
    for url, proc in urls:
        wait_until_up(url + "/health", proc)
    truth = EngineTruth(specs, str(TOKENIZER_FOLDER)) if events else None
    return [url for url, _ in urls], truth


def block_size_of(replica: str) -> int:
    """The replica's KV block size from vllm:cache_config_info (16, vLLM's default, if absent)."""
    with suppress(OSError, RuntimeError, ValueError, KeyError):
        return int(cache_config_info(get_text(replica + "/metrics"))["block_size"])
    return BLOCK_SIZE


def reset_caches(replicas: Sequence[str]) -> bool:
    """POST /reset_prefix_cache on each (vLLM needs VLLM_SERVER_DEV_MODE=1); all succeeded?"""
    done = True
    for replica in replicas:
        try:
            done = http("POST", replica + "/reset_prefix_cache")[0] == 200 and done
        except OSError:  # URLError is one
            done = False
    return done


def model_name(base: str, given: str) -> str:
    if given:
        return given
    return str(http_json("GET", base + "/v1/models")["data"][0]["id"])


def probe_shared_prefix(base: str, replica: str | None, model: str, workload: Workload) -> int:
    """Cached tokens of a request that shares only what every session's first turn shares
    (the system prompt, or the whole opening) with the one before it."""

    def ask(text: str) -> dict[str, Any]:
        body = {
            "model": model,
            "max_tokens": 1,
            "messages": [
                {"role": "system", "content": system_prompt(workload)},
                {"role": "user", "content": text},
            ],
        }
        url = base + "/v1/chat/completions"
        return dict(http_json("POST", url, body, {"X-Session-Id": "bench-probe"}, timeout=60.0))

    # With a shared opening, every session's first turn is the same prompt: all of it is shared.
    first, second = (
        (OPENING, OPENING) if workload.shared_opening else ("Alpha probe one.", "Bravo probe two.")
    )
    ask(first)
    before = read_counters(replica) if replica else None
    usage = ask(second).get("usage") or {}
    if replica and before is not None:
        return int(read_counters(replica).hits - before.hits)
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
