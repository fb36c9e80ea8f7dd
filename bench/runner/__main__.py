"""`python -m bench.runner`: the main benchmark (see bench/runner/run.py)."""

import sys

from bench.runner.run import main

try:
    sys.exit(main())
except KeyboardInterrupt:
    print("\ninterrupted; everything started was stopped", file=sys.stderr)
    sys.exit(130)
except RuntimeError as exc:  # a process or endpoint that failed; the details are in its log
    print(f"bench failed: {exc}; everything started was stopped", file=sys.stderr)
    sys.exit(1)
