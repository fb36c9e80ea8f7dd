"""The chart's Prometheus rules: `promtool check rules` and the unit tests of
deploy/prometheus/rules.test.yaml (`promtool test rules`), for `make helm-check`."""

from __future__ import annotations

from typing import Any

import yaml

from deploy import ROOT, RULE_TESTS, RULES
from deploy.checks.host import CheckError, ensure_installed, run, tail
from deploy.checks.report import Report


def rule_groups() -> list[dict[str, Any]]:
    """The `groups` of the rule file, as the PrometheusRule's spec holds them."""
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def check_rules(report: Report) -> None:
    """promtool validates the rule file and runs its unit tests."""
    try:
        ensure_installed({"promtool": "prometheus"})
    except CheckError as error:
        report.fail(f"promtool: {error}")
        return
    for what, path in (("check rules", RULES), ("test rules", RULE_TESTS)):
        result = run(["promtool", *what.split(), path], timeout=120, cwd=ROOT, check=False)
        said = ([""] + [line.strip() for line in result.stdout.splitlines() if line.strip()])[-1]
        report.expect(
            result.returncode == 0,
            f"promtool {what} {path.relative_to(ROOT)}: {said}",
            tail(result, lines=30),
        )
