"""The chart as rendered by Helm's engine (helm-python-sdk), and what its ServiceMonitors make a
Prometheus Operator scrape."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import yaml

from deploy import CHART

RELEASE = "demo"
NAMESPACE = "llm"
Docs = list[tuple[str, dict[str, Any]]]  # (template path, manifest) pairs


def render(values: dict[str, Any]) -> dict[str, str]:
    """The chart's manifests for ``values`` (template path -> text); HelmError if refused."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(manifests: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield path, doc


def by_kind(docs: Docs, kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in docs if doc["kind"] == kind]


@dataclass(frozen=True)
class ScrapeJob:
    """The targets one ServiceMonitor endpoint gives a Prometheus Operator: the labels every
    target gets and the workload whose pods are the targets."""

    job_name: str  # the operator's: serviceMonitor/<namespace>/<name>/<endpoint index>
    path: str
    labels: dict[str, str]  # job, namespace, service, endpoint, container
    workload: str  # Deployment or StatefulSet name, the prefix of its pods' names
    kind: str  # Deployment or StatefulSet

    def pod(self, index: int) -> str:
        """A pod name as Kubernetes makes them (a ReplicaSet hash for a Deployment's)."""
        return (
            f"{self.workload}-{index}"
            if self.kind == "StatefulSet"
            else f"{self.workload}-5f7b9c6d4-p{index}"
        )


def scrape_jobs(docs: Docs) -> dict[str, ScrapeJob]:
    """Each ServiceMonitor's scrape job, by its app.kubernetes.io/component label. Labels as
    the Prometheus Operator sets them: job is the Service's name, endpoint the port's name,
    container the container that has the port; plus namespace, service and pod."""
    jobs = {}
    for monitor in by_kind(docs, "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in by_kind(docs, "Service") if _has(s["metadata"]["labels"], wanted)]
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        workload = _workload(docs, service["spec"]["selector"])
        pod = workload["spec"]["template"]["spec"]
        (container,) = [
            c
            for c in pod["containers"]
            if any(p.get("name") == port["targetPort"] for p in c.get("ports", []))
        ]
        name = monitor["metadata"]["name"]
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        jobs[component] = ScrapeJob(
            job_name=f"serviceMonitor/{NAMESPACE}/{name}/0",
            path=endpoint.get("path", "/metrics"),
            labels={
                "job": service["metadata"]["name"],
                "namespace": NAMESPACE,
                "service": service["metadata"]["name"],
                "endpoint": endpoint["port"],
                "container": container["name"],
            },
            workload=workload["metadata"]["name"],
            kind=workload["kind"],
        )
    return jobs


def _workload(docs: Docs, selector: dict[str, str]) -> dict[str, Any]:
    (workload,) = [
        w
        for kind in ("Deployment", "StatefulSet")
        for w in by_kind(docs, kind)
        if _has(w["spec"]["template"]["metadata"]["labels"], selector)
    ]
    return workload


def _has(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())
