"""The benchmark over two real vLLM CPU engines, and the CPU mock beside it (make bench-vllm).

    python -m bench.runner --real-vllm-cpu [workload and load flags]

1. Start two real engines (`bench.real.vllm_engines`: the 12.7M-parameter `small` model, one per
   core) in float32: this CPU lacks bf16 instructions, so float32 prefill is ~3.5x faster
   (docs/real-vllm-cpu.md).
2. Run the seeded workload through the router for session, round_robin and least_loaded.
3. Run the same conversations on two CPU mocks with the `small-cpu` profile (fitted to this
   engine) and the engines' KV capacity. The mock's tokenizer counts about one token a word where
   the engine's BPE counts several, so the mock's word counts are scaled by the measured ratio:
   both see the same prompt tokens.
4. Write comparison.md into the real run's folder: hit ratios, TTFT percentiles and the
   session/round_robin ratios side by side, with the mock's relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.endpoints import cache_config_info, free_port, free_ports, get_text, http_json
from bench.load.workload import Workload, system_prompt, user_message
from bench.mock_vllm.tokenizer import encode, render_chat
from bench.real.vllm_engines import EngineConfig, running_engines, visible_logit_bias
from bench.runner import report
from bench.runner.replicas import EngineTruth
from bench.runner.run import point_latest_at
from bench.runner.run import run as run_targets
from bench.runner.sizes import REAL_CPU, REAL_CPU_NO_HEADER, REAL_CPU_SKEWED, Size, size_of
from bench.runner.targets import targets_of


@dataclass(frozen=True)
class RealScenario:
    name: str
    title: str
    size: Size
    policies: str
    kv_share: float | None  # each engine's KV cache, as a share of the live tokens (None: 256 MiB)


SCENARIOS = {
    "default": RealScenario(
        "default",
        "Default workload, 6 users",
        REAL_CPU,
        "session,round_robin,least_loaded",
        None,
    ),
    # The measurement that showed count-bounded loads losing: KV at 0.4 of the live tokens.
    "skewed": RealScenario(
        "skewed",
        "Skewed workload, 12 users, a quarter of the sessions hot, KV cache 0.4 of live tokens",
        REAL_CPU_SKEWED,
        "session,session_events,consistent_hash,plain_hash,session_2x,session_2x_events",
        0.4,
    ),
    "no_header": RealScenario(
        "no_header",
        "No session id, every session opening alike: the skewed workload with one prompt anchor",
        REAL_CPU_NO_HEADER,
        "prefix,prefix_events,prefix_2x_events",
        0.4,
    ),
}
COMPARED = (
    ("hit_ratio", "cluster hit ratio"),
    ("ideal_hit_ratio", "ideal hit ratio"),
    ("first_turn_ttft_p50_ms", "first-turn TTFT p50 (ms)"),
    ("later_turns_ttft_p50_ms", "later-turn TTFT p50 (ms)"),
    ("later_turns_ttft_p90_ms", "later-turn TTFT p90 (ms)"),
    ("ttft_p50_ms", "TTFT p50, all turns (ms)"),
    ("requests", "requests"),
)


def engine_tokens(url: str, model: str, text: str) -> int:
    return int(http_json("POST", url + "/tokenize", {"model": model, "prompt": text})["count"])


def tokens_per_mock_token(url: str, model: str, workload: Workload) -> float:
    """How many engine tokens one mock token stands for, on this workload's own text."""
    messages: list[dict[str, object]] = [
        {"role": "system", "content": system_prompt(workload)},
        {"role": "user", "content": user_message(workload, 0, 0, 1)},
        {"role": "user", "content": user_message(workload, 0, 0, 2)},
    ]
    text = "\n".join(str(m["content"]) for m in messages)
    return engine_tokens(url, model, text) / len(encode(render_chat(messages)))


def live_tokens(url: str, model: str, workload: Workload, users: int) -> float:
    """Prompt tokens the users' live sessions hold at a time: each user's session at the mean of
    its turns, hot ones included at their share (the engine's tokenizer counts the text)."""
    system = engine_tokens(url, model, system_prompt(workload))
    total = 0.0
    for user in range(users):
        prompt, sizes = float(system), []
        for turn in range(1, workload.turns + 1):
            prompt += engine_tokens(url, model, user_message(workload, user, 0, turn))
            sizes.append(prompt)
            prompt += workload.answer_tokens
        total += sum(sizes) / len(sizes)
    return total


def kv_bytes_per_token(config: EngineConfig) -> int:
    """K and V of every layer for one token, from the model's own config.json."""
    shape = json.loads((config.model_dir / "config.json").read_text())
    head_dim = shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"]
    width = {"float32": 4, "bfloat16": 2, "float16": 2}[config.dtype]
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * width


def num_gpu_blocks(url: str) -> int:
    return int(cache_config_info(get_text(url + "/metrics"))["num_gpu_blocks"])


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every process in a process group (an engine: API server + engine core)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == pgid:  # fields[2] is pgrp; utime, stime at 11, 12
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run(args: argparse.Namespace, command: str) -> None:
    """Every requested scenario over real engines, then over mocks; one folder per side each."""
    names = [n.strip() for n in (args.scenarios or "default").split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown}; one of {', '.join(SCENARIOS)}")
    started = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = args.results_dir / f"{started}-real-cpu"
    for name in names:
        run_scenario(args, command, SCENARIOS[name], folder / name)
    point_latest_at(folder)
    print(f"\n{folder}")


def run_scenario(
    args: argparse.Namespace, command: str, scenario: RealScenario, folder: Path
) -> None:
    size = size_of(args, scenario.size)
    targets = targets_of(args, scenario.policies)
    config = EngineConfig(
        model="small",
        count=2,
        dtype="float32",
        base_port=free_port(),
        kv_events_port=free_ports(4),  # publisher and replay of each engine: engine truth
    )
    kv_note = ""
    if scenario.kv_share is not None:
        # Size the cache from the workload's own text, counted by a briefly started engine.
        with running_engines(replace(config, count=1, kv_events_port=None)) as probe:
            live = live_tokens(probe.urls[0], config.name, size.workload, size.users)
        kv_bytes = round(scenario.kv_share * live * kv_bytes_per_token(config))
        config = replace(
            config, kv_cache_bytes=kv_bytes, base_port=free_port(), kv_events_port=free_ports(4)
        )
        kv_note = (
            f" KV cache {kv_bytes / 2**20:.1f} MiB each: {scenario.kv_share:g} of the "
            f"workload's ~{live:,.0f} live tokens."
        )
    with running_engines(config) as fleet:
        model = config.name
        scale = tokens_per_mock_token(fleet.urls[0], model, size.workload)
        blocks = num_gpu_blocks(fleet.urls[0])
        bias = visible_logit_bias(config)
        real_args = replace_args(
            args, replicas=",".join(fleet.urls), model=model,
            extra_body=json.dumps({"temperature": 0.0, "logit_bias": bias}),
        )  # fmt: skip
        setup = (
            f"2 real vLLM CPU engines (vllm-cpu 0.32.0, `small` 12.7M-parameter Llama, float32, "
            f"block size 32, {blocks} KV blocks each, one core each).{kv_note}"
        )
        cpu_before = [group_cpu_seconds(e.pgid) for e in fleet.engines]
        wall = time.monotonic()
        truth = EngineTruth({e.url: e.replica_spec for e in fleet.engines}, str(config.model_dir))
        real_folder, real = run_targets(
            real_args, size, targets, command, setup, folder=folder / "real", truth=truth
        )
        wall = time.monotonic() - wall
        shares = [
            (group_cpu_seconds(e.pgid) - before) / wall
            for e, before in zip(fleet.engines, cpu_before, strict=True)
        ]
    print(f"\n{scenario.title}, real engines\n{report.table(real['policies'])}")
    w = size.workload
    mock_size = replace(
        size,
        mocks=2,
        speed=1.0,
        kv_blocks=blocks,
        workload=replace(
            w,
            system_words=round(w.system_words * scale),
            context_words=round(w.context_words * scale),
            followup_words=round(w.followup_words * scale),
        ),
    )
    mock_args = replace_args(args, replicas="", model="", extra_body="", mock_profile="small-cpu")
    mock_folder, mock = run_targets(
        mock_args,
        mock_size,
        targets,
        command + "  # mock side, scaled by " + f"{scale:.2f}",
        folder=folder / "mock",
    )
    text = comparison(real, mock, scale, mock_folder)
    text += (
        "\nCPU the real engines got during their run (each is pinned to one core and modelled by "
        "the mock as having it to itself): "
        + ", ".join(f"{share:.0%}" for share in shares)
        + " of a core; load average at the end "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg())
        + ".\n"
    )
    (real_folder / "comparison.md").write_text(text, encoding="utf-8")
    (real_folder / "mock-summary.json").write_text(
        json.dumps(mock, indent=2) + "\n", encoding="utf-8"
    )
    print(f"\n{scenario.title}, mocks\n{report.table(mock['policies'])}\n\n{text}")


def replace_args(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def _relative(real: float | None, mock: float | None) -> str:
    if real in (None, 0) or mock is None:
        return "-"
    return f"{(mock - real) / real:+.0%}"


def comparison(real: dict[str, Any], mock: dict[str, Any], scale: float, mock_folder: Path) -> str:
    lines = [
        "# Real vLLM CPU engines vs the CPU mock (small-cpu profile)",
        "",
        f"Real: {real['replica_setup']} Mock: {mock['replica_setup']} The mock's word counts "
        f"were scaled by {scale:.2f} so both see the same prompt tokens (prompt tokens per "
        "request below). Mock run: " + str(mock_folder),
        "",
        "| policy | figure | real | mock | mock vs real |",
        "|---|---|---|---|---|",
    ]
    for policy, figures in real["policies"].items():
        other = mock["policies"].get(policy, {})
        for key, label in COMPARED:
            a, b = figures.get(key), other.get(key)
            lines.append(f"| {policy} | {label} | {a} | {b} | {_relative(a, b)} |")
        per_req = [
            s["prompt_tokens"] / s["requests"] if s.get("requests") else None
            for s in (figures, other)
        ]
        lines.append(
            f"| {policy} | prompt tokens per request | {per_req[0] and round(per_req[0])} | "
            f"{per_req[1] and round(per_req[1])} | {_relative(per_req[0], per_req[1])} |"
        )
    measured = real["policies"]
    if "session" not in measured or "round_robin" not in measured:
        return "\n".join(lines) + "\n"  # a scenario without the pair: no ratios to print
    lines += ["", "Session against round_robin, the figures the product's claim rests on:", ""]
    lines += ["| ratio | real | mock | mock vs real |", "|---|---|---|---|"]
    for key, label in (
        ("later_turns_ttft_p50_ms", "round_robin / session, later-turn TTFT p50"),
        ("ttft_p50_ms", "round_robin / session, TTFT p50"),
        ("hit_ratio", "session / round_robin, hit ratio"),
    ):
        ratios = []
        for side in (real, mock):
            s, r = side["policies"].get("session", {}), side["policies"].get("round_robin", {})
            num, den = (r.get(key), s.get(key)) if "ttft" in key else (s.get(key), r.get(key))
            ratios.append(round(num / den, 2) if num and den else None)
        lines.append(f"| {label} | {ratios[0]} | {ratios[1]} | {_relative(ratios[0], ratios[1])} |")
    return "\n".join(lines) + "\n"
