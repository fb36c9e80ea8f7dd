"""make dashboard-check: every query of the Grafana dashboard, and the chart's rules, evaluated by
a real Prometheus that scrapes a router under load.

On 127.0.0.1: two CPU mocks of vLLM and a third "vLLM pod" (the fast fake upstream) that answers
503, so that upstream errors, failovers and ejections have something to show; the router in front
of the three with `--policy session`; and Debian's Prometheus, scraping them with the labels the
chart's ServiceMonitors give them in Kubernetes (job, namespace, service, pod, container,
endpoint) and loading the chart's rule file. A short benchmark (`python -m bench.runner --quick
--router-url ...`) goes through the router; then every query of every panel, annotation and
template variable goes to Prometheus's HTTP API. A query fails when Prometheus refuses it, returns
no series or only NaN, names a label that no series of its metrics carries, or returns series
without a label its legend shows; the failure names the panel and query and says which of its
selectors matched nothing, with the labels the metric does have. Every rule must evaluate without
error, and every recording rule return series.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.endpoints import NotUp, free_port, http, http_json, router_command, wait_until_up
from bench.runner.processes import Processes, processes
from bench.runner.replicas import start_mocks
from bench.runner.sizes import QUICK
from deploy import DASHBOARD, RULES
from deploy.checks.chart import ScrapeJob, documents, render, scrape_jobs
from deploy.checks.host import CheckError, ensure_installed
from deploy.checks.panels import annotation_queries, panel_queries, variables
from deploy.checks.prometheus import Prometheus, PromQLError, start_prometheus
from deploy.checks.queries import check_query, check_rules_evaluate, variable_values
from deploy.checks.report import Report, run_check

LOAD_SECONDS = 15.0
TARGETS_TIMEOUT = 30.0  # seconds for Prometheus to scrape every target once


@dataclass(frozen=True)
class Fleet:
    router: str
    mocks: list[str]
    failing: str  # the replica that answers 503
    model: str


def start_fleet(procs: Processes, folder: Path) -> Fleet:
    """Two mocks publishing their KV-cache events, a failing replica, and the router in front
    of the three, reading the mocks' events."""
    mocks, truth = start_mocks(procs, QUICK, "llama-3-8b-h100", folder)
    assert truth is not None
    port = free_port()
    command = [sys.executable, "-m", "bench.checks.fake_upstream", "--port", str(port)]
    failing = f"http://127.0.0.1:{port}"
    started = procs.start("failing replica", [*command, "--fault-control"], folder / "failing.log")
    wait_until_up(failing + "/health", started)
    http_json("POST", failing + "/_fault", {"status": 503})  # its /health stays 200
    port = free_port()
    specs = [truth.specs[url] for url in mocks]
    flags = [flag for spec in [*specs, failing] for flag in ("--replica", spec)]
    flags += ["--policy", "session", "--scrape-interval", "1", "--health-interval", "1"]
    flags += ["--tokenizer", truth.tokenizer]
    router = f"http://127.0.0.1:{port}"
    log = folder / "router.log"
    started = procs.start("router", router_command(port, *flags, "--drain-seconds", "1"), log)
    try:
        wait_until_up(router + "/ready", started, timeout=30)
    except NotUp as error:
        raise CheckError(f"the router did not come up: {error}: {log_tail(log)}") from error
    model = http_json("GET", mocks[0] + "/v1/models")["data"][0]["id"]
    return Fleet(router, mocks, failing, model)


def scrape_configs(fleet: Fleet) -> list[dict[str, Any]]:
    """Prometheus scrape jobs that label the fleet as the chart's ServiceMonitors would."""
    jobs = scrape_jobs(list(documents(render({"serviceMonitor": {"enabled": True}}))))
    return [
        scrape_config(jobs["router"], [fleet.router]),
        scrape_config(jobs["vllm"], [*fleet.mocks, fleet.failing]),
    ]


def scrape_config(job: ScrapeJob, urls: Sequence[str]) -> dict[str, Any]:
    targets = [
        {
            "targets": [urlsplit(url).netloc],
            "labels": {**job.labels, "pod": job.pod(i)},
        }
        for i, url in enumerate(urls)
    ]
    return {"job_name": job.job_name, "metrics_path": job.path, "static_configs": targets}


def wait_for_targets(report: Report, prometheus: Prometheus, count: int) -> None:
    deadline = time.monotonic() + TARGETS_TIMEOUT
    while True:
        targets = prometheus.targets()
        if len(targets) == count and all(t["health"] == "up" for t in targets):
            pods = ", ".join(sorted(t["labels"].get("pod", "?") for t in targets))
            report.ok(f"Prometheus scrapes {count} targets, labelled as in Kubernetes: {pods}")
            return
        if time.monotonic() > deadline:
            down = [f"{t['scrapeUrl']} {t['health']} {t['lastError']}" for t in targets]
            raise CheckError(f"{len(targets)} of {count} targets, not all up: {'; '.join(down)}")
        time.sleep(0.5)


def run_load(procs: Processes, fleet: Fleet, folder: Path, seconds: float) -> str:
    """A short benchmark through the router; returns what it did, in a few words."""
    command = [sys.executable, "-m", "bench.runner", "--quick", "--router-url", fleet.router]
    command += ["--replicas", ",".join(fleet.mocks), "--model", fleet.model]
    command += ["--duration", str(seconds), "--results-dir", str(folder / "bench")]
    log = folder / "load.log"
    process = procs.start("load", command, log)
    limit = seconds + 90
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired as error:
        procs.stop(process)
        raise CheckError(f"the load ran past {limit:.0f} s: {log_tail(log)}") from error
    if code != 0:
        raise CheckError(f"the load exited with {code}: {log_tail(log)}")
    stored = stored_responses(fleet)
    summary = json.loads((folder / "bench" / "latest" / "summary.json").read_text())
    ((_, scenario),) = summary["scenarios"].items()
    (result,) = scenario["policies"].values()
    decisions = ", ".join(f"{outcome} {n}" for outcome, n in sorted(result["decisions"].items()))
    return (
        f"{result['requests']} requests, {result['errors']} errors; decisions {decisions}; {stored}"
    )


def replica_healthy(fleet: Fleet, replica: str) -> bool:
    rows = http_json("GET", fleet.router + "/router/replicas")["replicas"]
    return any(row["url"] == replica and row["healthy"] for row in rows)


def stored_responses(fleet: Fleet) -> str:
    """A stored Response and a turn that continues it, through the router: only the fake
    replica stores Responses (the mocks do not serve them), so sessions are tried until one
    lands there, once it serves again and the router took it back; then a read of an id that no
    replica holds."""
    http_json("POST", fleet.failing + "/_fault", {"reset": True})
    deadline = time.monotonic() + 30
    while not replica_healthy(fleet, fleet.failing):
        if time.monotonic() > deadline:
            raise CheckError("the router did not take the failing replica back once it recovered")
        time.sleep(0.5)
    url = fleet.router + "/v1/responses"
    for session in range(40):
        body = {"model": fleet.model, "input": "Hello", "store": True}
        status, raw = http("POST", url, body, {"X-Session-Id": f"responses-{session}"})
        if status == 200:
            first = json.loads(raw)["id"]
            body = {"model": fleet.model, "input": "And then?", "previous_response_id": first}
            status, _ = http("POST", url, body)
            missing = http("GET", url + "/resp_nobody_holds_this")[0]
            return f"a stored Response continued ({status}), an unknown one read ({missing})"
    raise CheckError("no session reached the replica that stores Responses")


def log_tail(path: Path, lines: int = 12) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:]) or f"({path.name} is empty)"


def check(report: Report, load_seconds: float) -> None:
    ensure_installed({"prometheus": "prometheus"})
    dashboard = json.loads(DASHBOARD.read_text())
    since = time.time()
    with tempfile.TemporaryDirectory(prefix="dashboard-check-") as tmp, processes() as procs:
        folder = Path(tmp)
        fleet = start_fleet(procs, folder)
        report.ok(f"router {fleet.router} in front of 2 mocks and a failing replica (503)")
        configs = scrape_configs(fleet)
        try:
            prometheus = start_prometheus(procs, folder, configs, [RULES])
        except NotUp as error:
            tail = log_tail(folder / "prometheus.log")
            raise CheckError(f"Prometheus did not start: {error}: {tail}") from error
        wait_for_targets(report, prometheus, count=1 + len(fleet.mocks) + 1)
        report.ok(f"load for {load_seconds:.0f} s: {run_load(procs, fleet, folder, load_seconds)}")
        time.sleep(2)  # a last scrape and rule evaluation after the load
        values: dict[str, list[str]] = {}
        for variable in variables(dashboard):
            variable_values(report, prometheus, variable, values, since)
        if not variables(dashboard):
            report.ok("template variables: none that query Prometheus (the data source only)")
        for query in panel_queries(dashboard) + annotation_queries(dashboard):
            check_query(report, prometheus, query, values, since)
        check_rules_evaluate(report, prometheus, since)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=float, default=LOAD_SECONDS)
    args = parser.parse_args(argv)
    errors = (CheckError, NotUp, PromQLError)
    run_check("dashboard check", lambda report: check(report, args.load_seconds), errors)


if __name__ == "__main__":
    main()
