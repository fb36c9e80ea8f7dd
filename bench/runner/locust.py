"""Locust for one target: its command line (the workload as flags) and a watched, bounded run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import ROOT
from bench.runner.processes import Processes
from bench.runner.sizes import Size
from bench.runner.targets import Target

LOCUSTFILE = ROOT / "bench" / "load" / "locustfile.py"


def locust_command(
    urls: list[str], target: Target, size: Size, records: Path, args: argparse.Namespace
) -> list[str]:
    """Locust for `target`; with several router instances, turn n goes to urls[n mod len]."""
    w = size.workload
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        str(size.users),
        "-r",
        str(size.spawn_rate),
        "-t",
        f"{size.duration:g}s",
        "--stop-timeout",
        "30",
        "--host",
        urls[0],
        "--records",
        str(records),
        "--loglevel",
        "WARNING",
        "--workload-seed",
        str(w.seed),
        "--system-words",
        str(w.system_words),
        "--context-words",
        str(w.context_words),
        "--followup-words",
        str(w.followup_words),
        "--answer-tokens",
        str(w.answer_tokens),
        "--turns",
        str(w.turns),
        "--think-time",
        str(w.think_time),
        "--hot-share",
        str(w.hot_share),
        "--hot-context-factor",
        str(w.hot_context_factor),
        "--hot-pace-factor",
        str(w.hot_pace_factor),
    ]
    if w.shared_opening:
        cmd += ["--shared-opening"]
    if len(urls) > 1:
        cmd += ["--hosts", ",".join(urls)]
    if args.model:
        cmd += ["--model", args.model]
    if args.extra_body:
        cmd += ["--extra-body", args.extra_body]
    if target.session_header:
        cmd += ["--session-header", args.session_header]
    else:
        cmd += ["--no-session-header"]
    return cmd


def run_locust(
    procs: Processes, cmd: list[str], target: Target, size: Size, folder: Path, records: Path
) -> None:
    proc = procs.start(f"locust-{target.name}", cmd, folder / f"locust-{target.name}.log")
    started = time.monotonic()
    hard_stop = started + size.duration + 90  # spawn, graceful stop and summary
    tty = sys.stderr.isatty()
    last_line = 0.0
    while proc.poll() is None:
        time.sleep(1.0)
        now = time.monotonic()
        if now > hard_stop:
            procs.stop(proc)
            raise RuntimeError(f"locust for {target.name} overran; see locust-{target.name}.log")
        if tty or now - last_line >= 15:
            lines = _count_lines(records)
            elapsed = min(now - started, size.duration)
            text = f"  {target.name:<14} {elapsed:5.0f}/{size.duration:g} s  requests {lines}"
            print(
                ("\r" + text) if tty else text, end="" if tty else "\n", file=sys.stderr, flush=True
            )
            last_line = now
    if tty:
        print(file=sys.stderr)
    procs.stop(proc)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0
