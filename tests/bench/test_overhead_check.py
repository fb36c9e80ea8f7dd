"""The overhead check runs end to end: direct, router, the bare aiohttp relay, the relay on raw
protocols and (where nginx is installed) the compiled reference, one short round.

No timing is asserted (that is the check's own job, on an idle machine): only that every target
answered every request and that each relay's CPU per request was measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench import ROOT
from bench.checks.nginx_reference import render_config

NGINX = shutil.which("nginx")


def test_the_overhead_check_measures_router_and_floor_without_errors() -> None:
    reference = ["--nginx"] if NGINX else []  # installed by the check itself in `make bench-...`
    done = subprocess.run(
        [sys.executable, "-m", "bench.checks.overhead", "--seconds", "0.5", "--rounds", "1",
         "--concurrency", "2", "--floor", "--raw", *reference],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("    2 ")]
    expected = ["direct", "router", "floor", "raw"] + (["nginx"] if NGINX else [])
    assert [row[1] for row in rows] == expected
    assert all(row[-1] == "0" for row in rows), rows  # no errors on any target
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["router_cpu_ms_per_request"]["2"] > 0
    assert figures["floor_cpu_ms_per_request"]["2"] > 0
    assert figures["raw_cpu_ms_per_request"]["2"] > 0


def test_the_nginx_reference_config_is_one_nginx_accepts(tmp_path: Path) -> None:
    config = render_config(tmp_path, 18080, "127.0.0.1:18081")
    assert "proxy_buffering off;" in config and "keepalive 256;" in config
    if NGINX is None:  # what the check would run is still rendered and read above
        return
    (tmp_path / "nginx.conf").write_text(config)
    done = subprocess.run(
        [NGINX, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
