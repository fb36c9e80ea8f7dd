"""Reading a dashboard's queries and the selectors in PromQL (deploy/checks/panels.py)."""

from __future__ import annotations

import json
from typing import Any

from deploy import DASHBOARD
from deploy.checks.panels import (
    Selector,
    Variable,
    annotation_queries,
    label_names,
    metric_names,
    panel_queries,
    selectors,
    substitute,
    variables,
)


def target(expr: str, ref: str = "A", legend: str = "") -> dict[str, Any]:
    return {"refId": ref, "expr": expr, "legendFormat": legend}


DASHBOARD_JSON: dict[str, Any] = {
    "panels": [
        {"type": "stat", "title": "Before any row", "targets": [target("up")]},
        {"type": "row", "title": "Open row", "panels": []},
        {"type": "timeseries", "title": "Rate", "targets": [target("rate(x[5m])", "B", "{{pod}}")]},
        {
            "type": "row",
            "title": "Collapsed row",
            "collapsed": True,
            "panels": [{"type": "timeseries", "title": "Inside", "targets": [target("y")]}],
        },
        {"type": "text", "title": "No queries"},
    ],
    "templating": {
        "list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "replica", "query": "label_values(up{job='r'}, replica)"},
            {
                "type": "query",
                "name": "pod",
                "query": {"query": "label_values(pod)", "refId": "A"},
                "includeAll": True,
            },
        ]
    },
    "annotations": {"list": [{"name": "Deploys", "expr": "changes(z[1m]) > 0"}]},
}


def test_every_panel_query_is_found_with_its_row_including_collapsed_rows() -> None:
    queries = panel_queries(DASHBOARD_JSON)
    assert [q.where for q in queries] == [
        'panel "Before any row", query A',
        'panel "Rate" (row "Open row"), query B',
        'panel "Inside" (row "Collapsed row"), query A',
    ]
    assert queries[1].legend_labels() == ["pod"]


def test_query_variables_and_annotations_are_found_but_not_the_data_source() -> None:
    assert variables(DASHBOARD_JSON) == [
        Variable("replica", "label_values(up{job='r'}, replica)", multi=False),
        Variable("pod", "label_values(pod)", multi=True),
    ]
    assert variables(DASHBOARD_JSON)[0].call() == ("label_values", ["up{job='r'}", "replica"])
    assert variables(DASHBOARD_JSON)[1].call() == ("label_values", ["pod"])
    assert Variable("v", "sum(up)", False).call() == ("query_result", ["sum(up)"])
    assert [q.expr for q in annotation_queries(DASHBOARD_JSON)] == ["changes(z[1m]) > 0"]


def test_grafana_variables_become_durations_single_values_or_an_escaped_alternation() -> None:
    expr = 'rate(m{replica=~"$replica", pod="${pod}"}[$__rate_interval])'
    assert substitute(expr, {"replica": ["a"], "pod": ["p-0"]}) == (
        'rate(m{replica=~"a", pod="p-0"}[1m])'
    )
    several = substitute('m{replica=~"$replica"}', {"replica": ["http://a.b:1", "c"]})
    assert several == 'm{replica=~"(http://a\\\\.b:1|c)"}'
    assert substitute("m{x=~'$unknown'}", {}) == "m{x=~'$unknown'}"


def test_selectors_skip_functions_aggregations_keywords_strings_and_windows() -> None:
    expr = (
        'sum by (le, pod) (rate(a_bucket{kind!="x}y", b=~"1|2"}[5m] offset 1m)) '
        '/ on(pod) group_left sum without (replica) (b) and {__name__=~"c_.*"} > 1e3'
    )
    assert selectors(expr) == [
        Selector('a_bucket{kind!="x}y", b=~"1|2"}', "a_bucket", '{kind!="x}y", b=~"1|2"}'),
        Selector("b", "b", ""),
        Selector('{__name__=~"c_.*"}', "", '{__name__=~"c_.*"}'),
    ]
    assert metric_names("histogram_quantile(0.9, sum(rate(vllm:ttft_bucket[5m])) by (le))") == {
        "vllm:ttft_bucket"
    }


def test_the_shipped_dashboard_has_queries_in_every_row() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    rows = {q.where.split('(row "')[1].split('")')[0] for q in queries if "(row" in q.where}
    assert {"Prefix cache", "Latency", "Routing", "Replicas", "Placement (session policy)"} <= rows
    assert all(metric_names(q.expr) for q in queries)


def test_label_names_are_those_of_matchers_and_grouping_lists_not_those_made_in_the_query() -> None:
    expr = (
        'sum by (outcome) (rate(d_total{outcom!="home", key_kind=~"a=b"}[5m])) '
        "/ on(pod) group_left(replica) sum by (pod, dst) "
        '(label_replace(m{le!=""}, "dst", "$1", "src", "(.*)"))'
    )
    assert label_names(expr) == {"outcome", "outcom", "key_kind", "pod", "replica", "le"}
