"""A Grafana dashboard's queries, read from its JSON: every panel's targets (in rows, collapsed
rows too), template variables and annotations; Grafana's variables replaced so that Prometheus
can evaluate them; and the metric selectors inside a PromQL expression. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# What Grafana puts for its built-in variables, sized for a check's minute-long Prometheus.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
GRAFANA_FUNCTIONS = ("label_values", "label_names", "metrics", "query_result")
KEYWORDS = {
    *("and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"),
    *("offset", "bool", "inf", "nan", "Inf", "NaN", "atan2"),
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_MADE_LABEL = re.compile(r"\blabel_(?:replace|join)\s*\([^,]+,\s*[\"'](\w+)[\"']")
_CALL = re.compile(r"\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_TOKEN = re.compile(
    rf"""(?P<string>{_STRING})
    | (?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))
    | (?P<window>\[[^\]]*\])
    | (?<![\w.:$])(?P<metric>[A-Za-z_:][\w:]*)(?![\w:])(?P<labels>\s*\{{(?:{_STRING}|[^}}])*\}})?
    | (?P<bare>\{{(?:{_STRING}|[^}}])*\}})""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Query:
    """One query of the dashboard: where it is, its PromQL and its legend."""

    where: str  # e.g. 'panel "Owed prefill per replica" (row "Placement"), query A'
    expr: str
    legend: str = ""

    def legend_labels(self) -> list[str]:
        """The labels the legend shows ({{replica}}): each series must carry them."""
        return _LEGEND_LABEL.findall(self.legend)


@dataclass(frozen=True)
class Variable:
    """A template variable whose values come from Prometheus."""

    name: str
    query: str  # label_values(...), query_result(...), metrics(...), label_names()
    multi: bool  # several values at once (multi-value or "All")

    def call(self) -> tuple[str, list[str]]:
        """Grafana's function and its arguments: ('label_values', ['metric{a="b"}', 'label'])."""
        match = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", self.query, re.DOTALL)
        if not match or match.group(1) not in GRAFANA_FUNCTIONS:
            return "query_result", [self.query]  # a bare expression
        function, arguments = match.groups()
        if function == "label_values" and "," in arguments:
            selector, label = arguments.rsplit(",", 1)
            return function, [selector.strip(), label.strip()]
        return function, [arguments.strip()] if arguments.strip() else []


@dataclass(frozen=True)
class Selector:
    """A metric selector in a PromQL expression, as written: `name{matchers}`, `name`, `{...}`."""

    text: str
    metric: str  # "" for a bare `{__name__=~"..."}`
    matchers: str  # "" when it has none


def panel_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every PromQL target of every panel, with its panel's title and row."""
    return list(_panel_queries(dashboard.get("panels", []), row=""))


def _panel_queries(panels: Sequence[Mapping[str, Any]], row: str) -> Iterator[Query]:
    for panel in panels:
        title = panel.get("title") or f"id {panel.get('id')}"
        if panel.get("type") == "row":
            row = title
            yield from _panel_queries(panel.get("panels", []), row)  # a collapsed row's
            continue
        for index, target in enumerate(panel.get("targets", [])):
            if target.get("expr"):
                ref = target.get("refId") or str(index)
                where = f'panel "{title}"' + (f' (row "{row}")' if row else "") + f", query {ref}"
                yield Query(where, target["expr"], target.get("legendFormat", ""))


def annotation_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    annotations = dashboard.get("annotations", {}).get("list", [])
    return [
        Query(f'annotation "{a.get("name")}"', a["expr"], a.get("legendFormat", ""))
        for a in annotations
        if a.get("expr")
    ]


def variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    """The template variables of type `query`, in order (later ones may use earlier ones)."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query", "")
        if isinstance(query, dict):
            query = query.get("query", "")
        multi = bool(variable.get("multi") or variable.get("includeAll"))
        found.append(Variable(variable["name"], str(query), multi))
    return found


def substitute(expr: str, values: Mapping[str, Sequence[str]]) -> str:
    """``expr`` with Grafana's variables replaced: built-ins by fixed durations, a variable by
    its value, or by a regex of all of them (as Grafana writes a multi-value variable)."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in BUILTINS:
            return BUILTINS[name]
        chosen = values.get(name)
        if chosen is None:
            return match.group()  # unknown: left for Prometheus to reject
        if len(chosen) == 1:
            return chosen[0]
        # Regex metacharacters escaped for RE2, the backslash doubled for the PromQL string.
        escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value) for value in chosen]
        return "(" + "|".join(escaped) + ")"

    return _VARIABLE.sub(replace, expr)


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of a PromQL expression, in order, skipping function names, keywords,
    label lists of by/without/on/ignoring, strings and range windows."""
    found = []
    for match in _TOKEN.finditer(expr):
        if match.group("bare"):
            found.append(Selector(match.group("bare"), "", match.group("bare")))
            continue
        metric = match.group("metric")
        labels = (match.group("labels") or "").strip()
        if metric in KEYWORDS:
            if labels:  # `and {__name__=~"..."}`: a bare selector after a keyword
                found.append(Selector(labels, "", labels))
            continue
        if not metric:
            continue  # a string, a grouping clause or a window
        if not labels and _CALL.match(expr, match.end()):
            continue  # a function, or an aggregation such as `sum by (le) (...)`
        found.append(Selector(metric + labels, metric, labels))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    return {selector.metric for selector in selectors(expr) if selector.metric}


def label_names(expr: str) -> set[str]:
    """The labels an expression names: in matchers and in by/without/on/ignoring/group_x lists,
    less those it makes itself with label_replace or label_join."""
    names = set()
    for selector in selectors(expr):
        masked = re.sub(_STRING, '""', selector.matchers)
        names.update(_MATCHER_LABEL.findall(masked))
    for listed in _GROUPING.findall(re.sub(_STRING, '""', expr)):
        names.update(name.strip() for name in listed.split(",") if name.strip())
    return names - {"__name__"} - set(_MADE_LABEL.findall(expr))


def all_exprs(node: Any) -> Iterator[str]:
    """Every `expr` string anywhere in a dashboard's JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from all_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_exprs(item)
