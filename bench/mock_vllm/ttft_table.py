"""Predicted TTFT of one prompt on an idle engine, cold and fully cached, by running the model.

``python -m bench.mock_vllm.ttft_table [--profile NAME]`` drives the engine's scheduler with a
virtual clock (no sleeping), so the figures are exactly what the mock serves at speed 1.
"""

from __future__ import annotations

import argparse

from .options import MockOptions
from .scheduler import Scheduler, Sequence


def predicted_ttft(scheduler: Scheduler, prompt_len: int, salt: int = 0) -> float:
    """Seconds from arrival to first token of a `prompt_len`-token prompt, answered in 1 token."""
    seq = Sequence(
        prompt_ids=[(salt * 1_000_003 + i) % 128256 for i in range(prompt_len)],
        output_ids=[1],
        output_pieces=["."],
        finish_reason="length",
        arrival=0.0,
    )
    scheduler.add(seq)
    now = 0.0
    while seq.first_token_at is None:
        plan = scheduler.plan_step()
        now += scheduler.duration(plan)
        scheduler.complete_step(plan, now)
    return now


def ttft_rows(
    profile: str, lengths: tuple[int, ...] = (1024, 8192, 32768)
) -> list[tuple[int, float, float]]:
    """(prompt tokens, cold TTFT, cached TTFT) for each length, on a fresh engine each."""
    options = MockOptions(profile=profile)
    rows = []
    for n in lengths:
        scheduler = Scheduler(options.limits(), options.timing_profile())
        cold = predicted_ttft(scheduler, n, salt=n)
        cached = predicted_ttft(scheduler, n, salt=n)
        rows.append((n, cold, cached))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="llama-3-8b-h100")
    args = parser.parse_args()
    print(f"profile {args.profile}\n| prompt tokens | cold TTFT | cached TTFT |\n|---|---|---|")
    for n, cold, cached in ttft_rows(args.profile):
        print(f"| {n} | {cold * 1e3:.1f} ms | {cached * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
