"""`python -m bench.runner`: the main benchmark (bench/runner/run.py), or with --real-vllm-cpu the
same over two real vLLM CPU engines and the mock beside them (bench/real/real_cpu.py)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from bench.real import real_cpu
from bench.runner import report
from bench.runner.cli import parse_args
from bench.runner.run import run
from bench.runner.sizes import size_of
from bench.runner.targets import targets_of


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.runner " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.real_vllm_cpu:
        real_cpu.run(args, command)
        return 0
    folder, summary = run(args, size_of(args), targets_of(args), command)
    print(report.table(summary["policies"]))
    print(f"\n{folder} ({summary['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:  # a process or endpoint that failed; the details are in its log
        print(f"bench failed: {exc}; everything started was stopped", file=sys.stderr)
        sys.exit(1)
