"""What turning a request into vLLM's prompt token ids costs the router (router/prompt_tokens.py).

    python -m bench.checks.tokenize_cost [--tokenizer FOLDER]

Times, median of many runs, a 20-turn chat of about 4,000 tokens and one long prompt of about
30,000 tokens: rendering the chat template, encoding, and both. Then whether `tokenizers`
releases the GIL: a worker thread encodes the long prompt while this thread ticks; the longest
gap between ticks is what an event loop would stall (about the whole encode if the GIL were
held, a switch interval or so if not).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.load.workload import Workload, first_message, followup, system_prompt
from router.prompt_tokens import PromptTokenizer

DEFAULT_TOKENIZER = ROOT / "tests" / "data" / "tokenizer" / "tiny"


def chat(turns: int, words: int) -> dict[str, Any]:
    """`turns` turns; the first user message, each later one and each answer `words` words."""
    workload = Workload(system_words=words, context_words=words, followup_words=words)
    messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt(workload)}]
    for turn in range(1, turns + 1):
        text = first_message(workload, 0, 0) if turn == 1 else followup(workload, 0, 0, turn)
        messages.append({"role": "user", "content": text})
        if turn < turns:
            messages.append({"role": "assistant", "content": followup(workload, 1, 0, turn)})
    return {"messages": messages}


def sized(tokenizer: PromptTokenizer, turns: int, target: int) -> dict[str, Any]:
    """A chat of `turns` turns whose prompt is about `target` tokens long (a little more)."""
    words = 8
    while True:
        body = chat(turns, words)
        count = len(tokenizer.request_tokens("/v1/chat/completions", body) or [])
        if count >= target:
            return body
        words = int(words * max(1.05, (target / max(count, 1)) ** 0.5))


def median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def longest_gap_ms(work: Callable[[], object]) -> tuple[float, float]:
    """(longest gap between this thread's ticks while `work` runs in a thread, work's ms)."""
    done = threading.Event()
    spent: list[float] = []

    def worker() -> None:
        started = time.perf_counter()
        work()
        spent.append(time.perf_counter() - started)
        done.set()

    thread = threading.Thread(target=worker)
    longest, last = 0.0, time.perf_counter()
    thread.start()
    while not done.is_set():
        sum(range(200))  # a little pure-Python work per tick, like a callback
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    return longest * 1000, spent[0] * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    tokenizer = PromptTokenizer(args.tokenizer)
    cases = {"20-turn chat": sized(tokenizer, 20, 4000), "long prompt": sized(tokenizer, 1, 30000)}
    print(f"tokenizer {args.tokenizer} ({tokenizer.tokenizer.get_vocab_size()} tokens)")
    print("| request | tokens | template (ms) | encode (ms) | both (ms) |")
    print("|---|---|---|---|---|")
    for name, body in cases.items():
        text = tokenizer.chat_prompt(body)
        tokens = tokenizer.encode(text)
        render = median_ms(lambda b=body: tokenizer.chat_prompt(b), args.repeat)  # type: ignore[misc]
        encode = median_ms(lambda t=text: tokenizer.encode(t), args.repeat)  # type: ignore[misc]
        both = median_ms(
            lambda b=body: tokenizer.request_tokens("/v1/chat/completions", b),  # type: ignore[misc]
            args.repeat,
        )
        print(f"| {name} | {len(tokens)} | {render:.3f} | {encode:.3f} | {both:.3f} |")
    long_text = tokenizer.chat_prompt(cases["long prompt"])
    gap, spent = longest_gap_ms(lambda: [tokenizer.encode(long_text) for _ in range(5)])
    interval = sys.getswitchinterval() * 1000
    print(
        f"GIL: 5 encodes of the long prompt took {spent:.1f} ms in a worker thread; the longest "
        f"gap between this thread's ticks meanwhile was {gap:.2f} ms (switch interval "
        f"{interval:.0f} ms): {'released' if gap < spent / 5 / 2 else 'held'} while encoding"
    )


if __name__ == "__main__":
    main()
