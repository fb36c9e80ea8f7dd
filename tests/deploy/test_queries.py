"""Checking a dashboard query's answer and saying why it is empty (deploy/checks/queries.py),
against a stand-in for Prometheus's API."""

from __future__ import annotations

import math
from typing import Any

import pytest

from deploy.checks.panels import Query
from deploy.checks.prometheus import PromQLError, Sample
from deploy.checks.queries import check_query, explain, summary
from deploy.checks.report import Report

DECISIONS = [
    {"__name__": "router_route_decisions_total", "key_kind": "header", "outcome": "home"},
    {"__name__": "router_route_decisions_total", "key_kind": "header", "outcome": "placed"},
]


class FakePrometheus:
    """Answers from tables: query results by expression, series by selector."""

    def __init__(
        self,
        results: dict[str, list[Sample]] | None = None,
        series_by_selector: dict[str, list[dict[str, str]]] | None = None,
        refused: dict[str, str] | None = None,
    ) -> None:
        self.results = results or {}
        self.series_by_selector = series_by_selector or {}
        self.refused = refused or {}

    def query(self, expr: str) -> list[Sample]:
        if expr in self.refused:
            raise PromQLError(self.refused[expr])
        return self.results.get(expr, [])

    def series(self, selector: str, since: float) -> list[dict[str, str]]:
        return self.series_by_selector.get(selector, [])

    def label_values(self, label: str) -> list[str]:
        assert label == "__name__"
        return sorted({s["__name__"] for found in self.series_by_selector.values() for s in found})


def checked(prometheus: Any, query: Query) -> Report:
    report = Report()
    check_query(report, prometheus, query, {}, since=0.0)
    return report


def test_a_query_with_numbers_in_labelled_series_passes() -> None:
    expr = "sum by (replica) (x)"
    prometheus = FakePrometheus(
        {expr: [Sample({"replica": "a"}, 1.0)]}, series_by_selector={"x": [{"replica": "a"}]}
    )
    assert checked(prometheus, Query("panel", expr, "{{replica}}")).problems == []


def test_a_misspelt_label_matcher_is_named_with_the_labels_the_metric_has() -> None:
    expr = 'sum(rate(router_route_decisions_total{outcom="home"}[5m]))'
    prometheus = FakePrometheus(series_by_selector={"router_route_decisions_total": DECISIONS})
    report = checked(prometheus, Query('panel "Moves"', expr))
    (problem,) = report.problems
    assert problem.startswith('panel "Moves": no series')
    assert 'router_route_decisions_total{outcom="home"} matches none of the 2 series' in problem
    assert "key_kind={header}, outcome={home,placed}" in problem


def test_a_misspelt_metric_name_is_named_with_similar_names() -> None:
    prometheus: Any = FakePrometheus(series_by_selector={"router_route_decisions_total": DECISIONS})
    reasons = explain(prometheus, "rate(router_route_decision_total[5m])", since=0.0)
    assert reasons == [
        "router_route_decision_total matches no series; "
        "similar names scraped: router_route_decisions_total"
    ]


def test_a_misspelt_label_in_a_negative_matcher_fails_although_it_returns_series() -> None:
    expr = 'sum(rate(router_route_decisions_total{outcom!="home"}[5m]))'
    prometheus = FakePrometheus(
        {expr: [Sample({}, 1.0)]}, series_by_selector={"router_route_decisions_total": DECISIONS}
    )
    (problem,) = checked(prometheus, Query("panel", expr)).problems
    assert "names the label(s) outcom, which no series of router_route_decisions_total" in problem
    assert "they carry: key_kind={header}, outcome={home,placed}" in problem


def test_a_legend_label_the_series_lack_fails() -> None:
    expr = "sum by (replcia) (x)"
    prometheus = FakePrometheus(
        {expr: [Sample({"replcia": "a"}, 1.0)]}, series_by_selector={"x": [{"replcia": "a"}]}
    )
    (problem,) = checked(prometheus, Query("panel", expr, "{{replica}}")).problems
    assert "shows the label 'replica', which 1 of its 1 series lack" in problem
    assert "they carry: replcia={a}" in problem


@pytest.mark.parametrize(
    ("results", "refused", "expected"),
    [
        ({"q": [Sample({}, math.nan)]}, {}, "only NaN"),
        ({}, {"q": "bad_data: parse error at char 3"}, "Prometheus refuses it"),
    ],
)
def test_nan_only_answers_and_parse_errors_fail(
    results: dict[str, list[Sample]], refused: dict[str, str], expected: str
) -> None:
    (problem,) = checked(FakePrometheus(results, refused=refused), Query("panel", "q")).problems
    assert expected in problem


def test_summary_shortens_long_value_lists() -> None:
    series = [{"__name__": "m", "pod": f"p{i}"} for i in range(6)]
    assert summary(series) == "pod={p0,p1,p2,p3,...}"
