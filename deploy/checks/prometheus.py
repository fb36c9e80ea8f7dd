"""A Prometheus server (Debian's package) for a check, on 127.0.0.1 with its own configuration
and data folder, and the calls of its HTTP API the checks make."""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.endpoints import free_port, http, wait_until_up
from bench.runner.processes import Processes

INTERVAL = "1s"  # scrape and rule evaluation: a check's load lasts seconds, not minutes
Series = dict[str, str]  # a series' labels, __name__ included where it has one


class PromQLError(RuntimeError):
    """Prometheus refused a query: the message is its own (a parse error, for instance)."""


@dataclass(frozen=True)
class Sample:
    labels: Series
    value: float


@dataclass(frozen=True)
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a GET on the HTTP API; PromQLError with Prometheus's message if refused."""
        query = urllib.parse.urlencode(params)
        status, body = http("GET", f"{self.url}/api/v1/{path}?{query}", timeout=20)
        try:
            answer = json.loads(body)
        except ValueError as error:
            raise PromQLError(f"HTTP {status}: {body[:200]!r}") from error
        if answer.get("status") != "success":
            raise PromQLError(f"{answer.get('errorType', status)}: {answer.get('error', body)}")
        return answer["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant query, now; a scalar or string result comes back as one sample."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [Sample({}, _number(data["result"][1]))]
        return [Sample(r["metric"], _number(r["value"][1])) for r in data["result"]]

    def series(self, selector: str, since: float) -> list[Series]:
        """The label sets of the series ``selector`` matched since ``since`` (Unix time)."""
        found: list[Series] = self.api("series", **{"match[]": selector, "start": str(since)})
        return found

    def label_values(self, label: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values")
        return values

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its group's name added as `group`."""
        return [
            {**rule, "group": group["name"]}
            for group in self.api("rules")["groups"]
            for rule in group["rules"]
        ]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # a string result


def start_prometheus(
    procs: Processes, folder: Path, scrape_configs: list[dict[str, Any]], rule_files: list[Path]
) -> Prometheus:
    """Start Prometheus with these scrape jobs and rule files; returns once it is ready."""
    port = free_port()
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    log = folder / "prometheus.log"
    command = [
        "prometheus",
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    command += [f"--storage.tsdb.path={folder / 'tsdb'}", "--log.level=warn"]
    process = procs.start("prometheus", command, log)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/-/ready", process, timeout=30)
    return Prometheus(url, log)
