"""A dashboard's queries and a rule file's rules, evaluated through Prometheus's HTTP API; and
why a query returned nothing: which selector matched no series, and what labels the metric has."""

from __future__ import annotations

import difflib
import math
import re
import time
from collections.abc import Mapping, Sequence

from deploy import ROOT, RULES
from deploy.checks.panels import Query, Variable, label_names, metric_names, selectors, substitute
from deploy.checks.prometheus import Prometheus, PromQLError, Series
from deploy.checks.report import Report
from deploy.checks.rules import rule_groups

RULES_TIMEOUT = 10.0  # seconds for every rule to have been evaluated once


def check_query(
    report: Report,
    prometheus: Prometheus,
    query: Query,
    values: Mapping[str, Sequence[str]],
    since: float,
) -> None:
    """The query parses and returns at least one number, in series that carry its legend's
    labels; else a failure saying why."""
    expr = substitute(query.expr, values)
    try:
        samples = prometheus.query(expr)
    except PromQLError as error:
        report.fail(f"{query.where}: Prometheus refuses it\n        {expr}\n        {error}")
        return
    if not any(math.isfinite(sample.value) for sample in samples):
        what = "only NaN (0/0: its counters did not move)" if samples else "no series"
        why = explain(prometheus, expr, since) if not samples else []
        lines = "".join(f"\n        {line}" for line in [expr, *why])
        report.fail(f"{query.where}: {what}{lines}")
        return
    unknown = unknown_labels(prometheus, expr, since)
    if unknown:
        report.fail(f"{query.where}: {unknown}\n        {expr}")
        return
    for label in query.legend_labels():
        lacking = [s.labels for s in samples if label not in s.labels]
        if lacking:
            report.fail(
                f"{query.where}: its legend {query.legend!r} shows the label {label!r}, which "
                f"{len(lacking)} of its {len(samples)} series lack\n        {expr}\n"
                f"        they carry: {summary(lacking)}"
            )
            return
    report.ok(f"{query.where}: {len(samples)} series")


def unknown_labels(prometheus: Prometheus, expr: str, since: float) -> str:
    """A label the expression names that no series of its metrics carries (a misspelling:
    `outcom!="home"` matches every series, `by (replcia)` merges them all), said in words."""
    metrics = metric_names(expr)
    carried: list[Series] = [s for metric in metrics for s in prometheus.series(metric, since)]
    known = {name for labels in carried for name in labels}
    unknown = sorted(label_names(expr) - known)
    if not metrics or not unknown:
        return ""
    return (
        f"names the label(s) {', '.join(unknown)}, which no series of {', '.join(sorted(metrics))} "
        f"carries; they carry: {summary(carried)}"
    )


def explain(prometheus: Prometheus, expr: str, since: float) -> list[str]:
    """Why an expression returned nothing: the selectors in it that match no series."""
    reasons = []
    for selector in selectors(expr):
        if prometheus.series(selector.text, since):
            continue
        every = prometheus.series(selector.metric, since) if selector.metric else []
        if every:
            reasons.append(
                f"{selector.text} matches none of the {len(every)} series of {selector.metric}, "
                f"whose labels are {summary(every)}"
            )
            continue
        names = prometheus.label_values("__name__")
        close = difflib.get_close_matches(selector.metric, names, n=3, cutoff=0.6)
        reasons.append(
            f"{selector.text} matches no series"
            + (f"; similar names scraped: {', '.join(close)}" if close else "")
        )
    return reasons or ["each selector matches series: the operators or filters leave none"]


def summary(series: Sequence[Series], most: int = 4) -> str:
    """Label names and some of their values over ``series``: `outcome={home,placed}, ...`."""
    values: dict[str, set[str]] = {}
    for labels in series:
        for name, value in labels.items():
            if name != "__name__":
                values.setdefault(name, set()).add(value)
    parts = []
    for name, seen in sorted(values.items()):
        shown = sorted(seen)[:most] + (["..."] if len(seen) > most else [])
        parts.append(f"{name}={{{','.join(shown)}}}")
    return ", ".join(parts) or "no labels"


def variable_values(
    report: Report,
    prometheus: Prometheus,
    variable: Variable,
    values: dict[str, list[str]],
    since: float,
) -> None:
    """Resolve a template variable as Grafana would; it must have at least one value."""
    function, arguments = variable.call()
    arguments = [substitute(argument, values) for argument in arguments]
    where = f"variable ${variable.name} ({variable.query})"
    try:
        found = resolve(prometheus, function, arguments, since)
    except PromQLError as error:
        report.fail(f"{where}: Prometheus refuses it: {error}")
        return
    if not found:
        report.fail(f"{where}: no values")
        return
    values[variable.name] = found if variable.multi else found[:1]
    report.ok(f"{where}: {len(found)} values, e.g. {found[0]}")


def resolve(prometheus: Prometheus, function: str, arguments: list[str], since: float) -> list[str]:
    """The values of Grafana's Prometheus variable functions."""
    if function == "label_values" and len(arguments) == 2:
        selector, label = arguments
        return sorted({s[label] for s in prometheus.series(selector, since) if label in s})
    if function == "label_values" and len(arguments) == 1:
        return prometheus.label_values(arguments[0])
    if function == "label_names":
        names: list[str] = prometheus.api("labels")
        return names
    if function == "metrics":
        pattern = re.compile(arguments[0])
        return [name for name in prometheus.label_values("__name__") if pattern.search(name)]
    if function == "query_result":
        return [f"{s.labels} {s.value}" for s in prometheus.query(arguments[0])]
    raise PromQLError(f"unknown variable function {function}()")


def check_rules_evaluate(report: Report, prometheus: Prometheus, since: float) -> None:
    """Prometheus loaded every rule of the chart's file; each evaluates, and each recording
    rule returns series."""
    expected = {r.get("record") or r.get("alert") for g in rule_groups() for r in g["rules"]}
    deadline = time.monotonic() + RULES_TIMEOUT
    loaded = prometheus.rules()
    while any(r["health"] == "unknown" for r in loaded) and time.monotonic() < deadline:
        time.sleep(0.5)
        loaded = prometheus.rules()
    names = {rule["name"] for rule in loaded}
    report.expect(
        names == expected,
        f"Prometheus loaded the {len(expected)} rules of {RULES.relative_to(ROOT)}",
        f"missing {sorted(expected - names)}, unexpected {sorted(names - expected)}",
    )
    for rule in loaded:
        where = f"{rule['type']} rule {rule['name']}"
        unknown = unknown_labels(prometheus, rule["query"], since)
        if rule["health"] != "ok":
            report.fail(f"{where}: health {rule['health']}: {rule.get('lastError', '')}")
        elif unknown:
            report.fail(f"{where}: {unknown}\n        {rule['query']}")
        elif rule["type"] == "recording":
            check_query(report, prometheus, Query(where, rule["name"]), {}, since)
        else:
            report.ok(f"{where}: evaluates ({rule['state']}, {len(rule['alerts'])} alerts)")
