"""Figures of one benchmark run: per-request records + replica counters -> summary, report, plots.

No I/O besides reading records and writing the results folder; the runner owns the processes.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.runner.counters import ReplicaCounters

BLOCK_SIZE = 16  # vLLM's default KV block size; the runner reads the replicas' own

IDEAL_METHOD = (
    "Ideal hit ratio: what one replica with an unlimited prefix cache would hit on the same "
    "requests. Turn n of a session can reuse turn n-1's prompt + answer (the client appends the "
    "answer, so the next prompt extends it; prompt_tokens + completion_tokens from usage); any "
    "first turn except the run's very first can reuse the system prompt prefix shared by every "
    "session (measured once by a probe: two requests that differ after the system prompt, the "
    "second's cached tokens). Both are counted in whole KV blocks (the replicas' block size), "
    "never more than (prompt_tokens - 1) rounded down to a block, since vLLM recomputes the last "
    "prompt token. Sum over the "
    "completed requests of that, divided by the sum of their prompt tokens. Counting the answer's "
    "last token makes this an upper bound (vLLM keeps KV for all but the last sampled token)."
)


def load_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def ok(record: Mapping[str, Any]) -> bool:
    return record.get("status") == 200 and not record.get("error")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ideal_cached_tokens(
    records: Iterable[Mapping[str, Any]], shared_prefix_tokens: int, block_size: int = BLOCK_SIZE
) -> int:
    """Cached tokens of a single replica with unlimited cache on these requests (IDEAL_METHOD)."""
    done = [r for r in records if ok(r) and r.get("prompt_tokens") is not None]
    by_key = {(r["session_id"], r["turn"]): r for r in done}
    first_started = min((r["started_at"] for r in done), default=None)
    total = 0
    for record in done:
        prompt = int(record["prompt_tokens"])
        reusable = 0 if record["started_at"] == first_started else shared_prefix_tokens
        previous = by_key.get((record["session_id"], record["turn"] - 1))
        if previous is not None and previous.get("completion_tokens") is not None:
            extended = int(previous["prompt_tokens"]) + int(previous["completion_tokens"])
            reusable = max(reusable, extended)
        total += min(reusable, prompt - 1) // block_size * block_size
    return total


def fully_cached_later_turns(
    records: Iterable[Mapping[str, Any]], block_size: int = BLOCK_SIZE
) -> tuple[int, int]:
    """(later turns whose cached tokens cover the previous turn's prompt + answer in whole
    blocks, later turns with a known previous turn): the share that found their cache."""
    done = [r for r in records if ok(r) and r.get("prompt_tokens") is not None]
    by_key = {(r["session_id"], r["turn"]): r for r in done}
    hits = total = 0
    for record in done:
        previous = by_key.get((record["session_id"], record["turn"] - 1))
        if previous is None or previous.get("completion_tokens") is None:
            continue
        if record.get("cached_tokens") is None:
            continue
        extended = int(previous["prompt_tokens"]) + int(previous["completion_tokens"])
        # vLLM keeps no KV for the answer's last sampled token: one block less at worst.
        reusable = (min(extended - 1, int(record["prompt_tokens"]) - 1)) // block_size * block_size
        total += 1
        hits += int(record["cached_tokens"]) >= reusable
    return hits, total


def max_over_mean(values: Sequence[float]) -> float | None:
    if not values or sum(values) <= 0:
        return None
    return max(values) / (sum(values) / len(values))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summarise_policy(
    records: Sequence[Mapping[str, Any]],
    duration_s: float,
    deltas: Mapping[str, ReplicaCounters],
    replicas: Sequence[str],
    shared_prefix_tokens: int,
    block_size: int = BLOCK_SIZE,
) -> dict[str, Any]:
    """The per-policy figures of summary.json."""
    done = [r for r in records if ok(r)]
    ttft = [float(r["ttft_ms"]) for r in done if r.get("ttft_ms") is not None]
    first = [float(r["ttft_ms"]) for r in done if r["turn"] == 1 and r.get("ttft_ms") is not None]
    later = [float(r["ttft_ms"]) for r in done if r["turn"] > 1 and r.get("ttft_ms") is not None]
    latency = [float(r["latency_ms"]) for r in done if r.get("latency_ms") is not None]
    by_turn: dict[int, list[float]] = defaultdict(list)
    for r in done:
        if r.get("ttft_ms") is not None:
            by_turn[int(r["turn"])].append(float(r["ttft_ms"]))

    prompt_tokens = sum(int(r["prompt_tokens"] or 0) for r in done)
    with_cached = [r for r in done if r.get("cached_tokens") is not None]
    client_hit = (
        sum(int(r["cached_tokens"]) for r in with_cached)
        / sum(int(r["prompt_tokens"] or 0) for r in with_cached)
        if with_cached and sum(int(r["prompt_tokens"] or 0) for r in with_cached) > 0
        else None
    )
    queries = sum(d.queries for d in deltas.values())
    hits = sum(d.hits for d in deltas.values())
    hit_ratio: float | None = client_hit
    hit_source = "usage.prompt_tokens_details.cached_tokens"
    if queries > 0:
        hit_ratio, hit_source = hits / queries, "replica /metrics counters"
    ideal = (
        ideal_cached_tokens(done, shared_prefix_tokens, block_size) / prompt_tokens
        if prompt_tokens
        else None
    )

    served = Counter(str(r["replica"]) for r in done if r.get("replica"))
    load_by_replica: dict[str, float]
    if served:
        names = list(replicas) if replicas and set(served) <= set(replicas) else sorted(served)
        load_values = [float(served.get(name, 0)) for name in names]
        load_source = "x-router-replica header (requests)"
        load_by_replica = {name: float(count) for name, count in served.items()}
    else:
        names = sorted(deltas)
        load_values = [deltas[name].prompt_tokens for name in names]
        load_source = "replica vllm:prompt_tokens_total (tokens)"
        load_by_replica = {name: deltas[name].prompt_tokens for name in names}
    max_mean = max_over_mean(load_values)
    tokens_by_replica: dict[str, float] = defaultdict(float)
    for r in done:
        if r.get("replica") and r.get("prompt_tokens") is not None:
            tokens_by_replica[str(r["replica"])] += int(r["prompt_tokens"])
    if not tokens_by_replica:
        tokens_by_replica.update({name: deltas[name].prompt_tokens for name in deltas})
    token_names = list(replicas) if replicas else sorted(tokens_by_replica)
    max_mean_tokens = max_over_mean([tokens_by_replica.get(name, 0.0) for name in token_names])
    fully, later_known = fully_cached_later_turns(done, block_size)
    decisions = Counter(str(r.get("route") or "").partition("/")[2] or "unknown" for r in done)

    return {
        "requests": len(done),
        "errors": len(records) - len(done),
        "requests_per_s": round(len(done) / duration_s, 3) if duration_s > 0 else None,
        "ttft_p50_ms": _ms(percentile(ttft, 50)),
        "ttft_p90_ms": _ms(percentile(ttft, 90)),
        "ttft_p99_ms": _ms(percentile(ttft, 99)),
        "first_turn_ttft_p50_ms": _ms(percentile(first, 50)),
        "first_turn_ttft_p90_ms": _ms(percentile(first, 90)),
        "first_turn_ttft_p99_ms": _ms(percentile(first, 99)),
        "later_turns_ttft_p50_ms": _ms(percentile(later, 50)),
        "later_turns_ttft_p90_ms": _ms(percentile(later, 90)),
        "later_turns_ttft_p99_ms": _ms(percentile(later, 99)),
        "latency_p50_ms": _ms(percentile(latency, 50)),
        "latency_p90_ms": _ms(percentile(latency, 90)),
        "ttft_p50_ms_by_turn": {
            str(turn): _ms(percentile(values, 50)) for turn, values in sorted(by_turn.items())
        },
        "hit_ratio": None if hit_ratio is None else round(hit_ratio, 4),
        "hit_ratio_source": hit_source,
        "client_hit_ratio": None if client_hit is None else round(client_hit, 4),
        "ideal_hit_ratio": None if ideal is None else round(ideal, 4),
        "prompt_tokens": prompt_tokens,
        "max_mean_load": None if max_mean is None else round(max_mean, 3),
        "max_mean_prompt_tokens": None if max_mean_tokens is None else round(max_mean_tokens, 3),
        "prompt_tokens_by_replica": dict(tokens_by_replica),
        "later_turns_fully_cached": fully,
        "later_turns_known": later_known,
        "decisions": dict(decisions),
        "load_source": load_source,
        "load_by_replica": load_by_replica,
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
    }


def _cell(value: object, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if unit == " ms" else f"{value:.3g}{unit}"
    return f"{value}{unit}"


def _ratio(value: object) -> str:
    return "–" if value is None else f"{float(value):.1%}"  # type: ignore[arg-type]


def _share(part: object, whole: object) -> str:
    if not isinstance(part, (int, float)) or not isinstance(whole, (int, float)) or not whole:
        return "–"
    return f"{part}/{whole} ({part / whole:.0%})"


def _decisions(counts: Mapping[str, int]) -> str:
    return ", ".join(
        f"{name} {count}" for name, count in sorted(counts.items(), key=lambda i: -i[1])
    )


def table(policies: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table of report.md and docs/benchmark.md."""
    rows = [
        "| target | first turn TTFT p50 / p90 / p99 (ms) | later turns p50 / p90 / p99 | req/s "
        "| errors | hit ratio (ideal) | of ideal | later turns fully cached | max/mean prompt "
        "tokens | decisions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in policies.items():
        trio = [
            " / ".join(_cell(s.get(f"{prefix}_p{q}_ms")) for q in (50, 90, 99))
            for prefix in ("first_turn_ttft", "later_turns_ttft")
        ]
        hit, ideal = s.get("hit_ratio"), s.get("ideal_hit_ratio")
        of_ideal = f"{hit / ideal:.2f}" if hit is not None and ideal else "–"
        rows.append(
            f"| {name} | {trio[0]} | {trio[1]} | {_cell(s.get('requests_per_s'))} | "
            f"{s.get('errors')} | {_ratio(hit)} ({_ratio(ideal)}) | {of_ideal} | "
            f"{_share(s.get('later_turns_fully_cached'), s.get('later_turns_known'))} | "
            f"{_cell(s.get('max_mean_prompt_tokens'))} | {_decisions(s.get('decisions') or {})} |"
        )
    return "\n".join(rows)


def write_report(folder: Path, summary: Mapping[str, Any]) -> None:
    """report.md: the table, the workload, the method, the command."""
    workload = summary["workload"]
    knobs = "\n".join(f"- `{key}`: {value}" for key, value in workload.items())
    run = summary["run"]
    text = f"""# Benchmark {summary["started"]}

{table(summary["policies"])}

TTFT is request sent -> first streamed content token, measured by the locust client, in ms over
completed requests; "later turns" are turns 2 and up. Throughput is completed requests per second
of the {run["duration_s"]} s run. Hit ratio is the cluster's prefix-cache hit ratio from the
replicas' `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total` deltas (caches reset
before each policy); max/mean load is over replicas of requests served (`x-router-replica`).

{IDEAL_METHOD} Shared system-prompt prefix measured: {summary["shared_prefix_tokens"]} tokens.

## Workload
{knobs}
- users: {run["users"]}, spawn rate {run["spawn_rate"]}/s, {run["duration_s"]} s per policy

## Replicas
{chr(10).join(f"- {r}" for r in summary["replicas"]) or "- (not known: hit ratio from usage)"}

{summary.get("replica_setup", "")}

## Command
```
{summary["command"]}
```

Plots: `ttft_cdf.png`, `ttft_by_turn.png`, `hit_ratio.png`.
"""
    (folder / "report.md").write_text(text, encoding="utf-8")


def write_index(folder: Path, summaries: Mapping[str, Mapping[str, Any]]) -> None:
    """The run folder's report.md: every scenario's table, each with a link to its own report."""
    parts = [f"# Benchmark {next(iter(summaries.values()))['started']}", ""]
    for name, summary in summaries.items():
        parts += [
            f"## {summary.get('title', name)}",
            "",
            table(summary["policies"]),
            "",
            f"{summary.get('replica_setup', '')} Details, workload and plots: [{name}/report.md]"
            f"({name}/report.md).",
            "",
        ]
    (folder / "report.md").write_text("\n".join(parts), encoding="utf-8")


def write_plots(
    folder: Path,
    summary: Mapping[str, Any],
    records: Mapping[str, Sequence[Mapping[str, Any]]],
) -> None:
    """TTFT CDF per policy, TTFT p50 by turn per policy, hit ratio per policy vs ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies: Mapping[str, Mapping[str, Any]] = summary["policies"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, recs in records.items():
        values = sorted(float(r["ttft_ms"]) for r in recs if ok(r) and r.get("ttft_ms"))
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF, all turns")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "ttft_cdf.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in policies.items():
        turns = sorted(s["ttft_p50_ms_by_turn"], key=int)
        ax.plot(
            [int(t) for t in turns], [s["ttft_p50_ms_by_turn"][t] for t in turns], "o-", label=name
        )
    ax.set_yscale("log")
    ax.set_xlabel("turn")
    ax.set_ylabel("TTFT p50 (ms, log scale)")
    ax.set_title("TTFT p50 by turn")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "ttft_by_turn.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(policies)
    xs = range(len(names))
    ax.bar(
        [x - 0.2 for x in xs], [policies[n]["hit_ratio"] or 0 for n in names], 0.4, label="measured"
    )
    ax.bar([x + 0.2 for x in xs], [policies[n]["ideal_hit_ratio"] or 0 for n in names], 0.4,
           label="ideal (one unlimited cache)", alpha=0.6)  # fmt: skip
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("cluster prefix-cache hit ratio")
    ax.set_title("Prefix-cache hit ratio per policy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "hit_ratio.png", dpi=110)
    plt.close(fig)
