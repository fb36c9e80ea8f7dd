"""Offline checks of the Helm chart, the Grafana dashboard and their agreement with the router.

Run by `make helm-check` (`python -m deploy.check`). Needs no cluster and no helm binary: Helm's
Go engine comes with the PyPI package helm-python-sdk (a bundled libhelm_c), and Kubernetes'
OpenAPI schemas with kubernetes-validate; promtool (Debian's prometheus package, installed when
missing) checks and unit-tests the rules. Every problem found is printed; the exit status is 1 if
there was any.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import fields
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
from prometheus_client.parser import text_string_to_metric_families

from bench.mock_vllm.tokenizer import TOKENIZER_FOLDER
from deploy import CHART, DASHBOARD, DASHBOARD_COPY, ROOT, ROUTER_CONFIG, RULES
from deploy.checks.chart import Docs, by_kind, documents, render
from deploy.checks.panels import all_exprs, metric_names, substitute
from deploy.checks.report import Report
from deploy.checks.rules import check_rules, rule_groups
from router import vllm_names
from router.cli import load_config
from router.config import Config, coerce, default_of

EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
KUBE_VERSION = "1.34.0"
# API groups of custom resources: kubernetes-validate has no schema for them.
CRD_GROUPS = ("monitoring.coreos.com/",)

# Values that turn on every optional part of the chart (and use static replicas).
EVERYTHING_ON: dict[str, Any] = {
    "router": {
        "config": {
            "replica": [
                "http://vllm-0.example:8000",
                {"url": "http://vllm-1.example:8000", "weight": 2, "headers": {"X-Team": "a"}},
                {
                    "url": "http://vllm-2.example:8000",
                    "kv_events": "tcp://vllm-2.example:5557",
                    "kv_replay": "tcp://vllm-2.example:5558",
                    "kv_ranks": 2,
                },
            ],
            "upstream_header": ["Authorization=Bearer abc"],
            "admin_port": 9090,
            "tokenizer": "/models/tokenizer",
        },
        "extraVolumes": [{"name": "tokenizer", "configMap": {"name": "llama-tokenizer"}}],
        "extraVolumeMounts": [
            {"name": "tokenizer", "mountPath": "/models/tokenizer", "readOnly": True}
        ],
        "apiKeySecret": {"name": "router-api-keys", "key": "keys"},
        "extraArgs": ["--log-level", "debug"],
        "extraEnv": [{"name": "ROUTER_SPILL_TTL", "value": "60"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}},
            }
        ],
    },
    "vllm": {"enabled": False},
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    "imagePullSecrets": [{"name": "registry"}],
}
# Values the chart must refuse, and why.
MUST_FAIL: dict[str, dict[str, Any]] = {
    "no replicas and no vLLM": {"vllm": {"enabled": False}},
    "both replica and replicas_dns": {
        "router": {"config": {"replica": ["http://a:8000"], "replicas_dns": "b:8000"}}
    },
    "replicaCount is a string": {"replicaCount": "two"},
    "unknown router setting": {"router": {"config": {"polcy": "session"}}},
    "policy not one of the choices": {"router": {"config": {"policy": "sticky"}}},
}


def help_flags() -> set[str]:
    """Setting names (snake_case) of every flag `python -m router --help` lists."""
    out = subprocess.run(
        [sys.executable, "-m", "router", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    flags = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", out)) - {"help", "config"}
    flags -= {f for f in flags if f.startswith("no-") and f[3:] in flags}  # --no-route-headers
    return {f.replace("-", "_") for f in flags}


def check_values_cover_flags(report: Report, values: dict[str, Any]) -> None:
    config = values["router"]["config"]
    keys = {str(k).replace("-", "_") for k in config}
    flags = help_flags()
    for name in sorted(flags - keys):
        report.fail(f"values.yaml: flag --{name.replace('_', '-')} has no key router.config.{name}")
    for name in sorted(keys - flags):
        report.fail(f"values.yaml: router.config.{name} is not a router flag")
    if flags == keys:
        report.ok(f"values.yaml has a router.config key for each of the {len(flags)} flags")
    defaults = {f.name for f in fields(Config)}
    wrong = [
        f"{name}={config[name]!r} (router default {default_of(name)!r})"
        for name in sorted(keys & defaults)
        if coerce(name, config[name]) != default_of(name)
    ]
    report.expect(not wrong, "values.yaml router.config holds the router's defaults", str(wrong))


def check_schema_covers_config(report: Report) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = set(schema["properties"]["router"]["properties"]["config"]["properties"])
    names = {f.name for f in fields(Config)}
    report.expect(
        properties == names,
        "values.schema.json describes exactly the router's settings",
        f"missing {sorted(names - properties)}, unknown {sorted(properties - names)}",
    )


def lint(report: Report, label: str, values: dict[str, Any]) -> None:
    result = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
    findings = [f"{m['path']}: {m['error']}" for m in result["messages"] if m["severity"] >= 2]
    findings += result["errors"]
    report.expect(not findings, f"helm lint --strict ({label})", one_line("\n".join(findings)))


def one_line(text: str) -> str:
    """Helm's multi-line messages repeat themselves; keep each distinct line once."""
    lines = [line.strip(" -;") for line in text.splitlines()]
    return " | ".join(dict.fromkeys(line for line in lines if line))


def validate_manifests(report: Report, label: str, docs: Docs) -> bool:
    """Validate each manifest against Kubernetes' schemas; False if any is invalid."""
    checked, skipped, valid = 0, [], True
    for path, doc in docs:
        what = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')} ({Path(path).name})"
        if str(doc.get("apiVersion", "")).startswith(CRD_GROUPS):
            skipped.append(what)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            checked += 1
        except ValidationError as error:
            valid = False
            where = "/".join(str(p) for p in error.absolute_path)
            report.fail(
                f"{label}: {what} is not valid Kubernetes {KUBE_VERSION}: {where}: {error.message}"
            )
        except SchemaNotFoundError as error:
            valid = False
            report.fail(f"{label}: {what}: {error.message}")
    if valid:
        report.ok(f"{label}: {checked} manifests valid against Kubernetes {KUBE_VERSION} (strict)")
    if skipped:
        print(f"      skipped, custom resources without a schema: {', '.join(skipped)}")
    return valid


def check_router_pods(report: Report, label: str, docs: Docs) -> None:
    """The rendered config file loads in the router, and the Deployment runs it safely."""
    config_maps = [cm for cm in by_kind(docs, "ConfigMap") if "config.yaml" in cm.get("data", {})]
    if len(config_maps) != 1:
        report.fail(f"{label}: expected one ConfigMap with config.yaml, got {len(config_maps)}")
        return
    rendered = yaml.safe_load(config_maps[0]["data"]["config.yaml"])
    tokenizer = str(rendered.get("tokenizer") or "").rstrip("/")
    if tokenizer:  # a path in the pod: load it here with tokenizer files that exist
        rendered["tokenizer"] = str(TOKENIZER_FOLDER)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(rendered, handle)
        handle.flush()
        try:
            config = load_config(["--config", handle.name], environ={})
        except Exception as error:  # any refusal of the router is the finding
            report.fail(f"{label}: the router rejects the rendered config file: {error}")
            return
    report.ok(f"{label}: the router loads the rendered config file")

    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container.get("securityContext", {})
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    stop_sleep = pre_stop.get("sleep", {}).get("seconds", 0)
    problems = []
    if deployment["spec"].get("replicas", 1) < 1:
        problems.append("replicas < 1")
    if container["readinessProbe"]["httpGet"]["path"] != "/ready":
        problems.append("readiness probe is not GET /ready")
    if container["livenessProbe"]["httpGet"]["path"] != "/health":
        problems.append("liveness probe is not GET /health")
    if container["args"][:2] != ["--config", str(ROUTER_CONFIG)]:
        problems.append(f"the router is not started with --config {ROUTER_CONFIG}")
    if pod["terminationGracePeriodSeconds"] < stop_sleep + config.drain_seconds + 1:
        problems.append("terminationGracePeriodSeconds leaves no time to drain")
    if not pod["securityContext"].get("runAsNonRoot"):
        problems.append("pod may run as root")
    if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation"):
        problems.append("root filesystem writable or privilege escalation allowed")
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        problems.append("capabilities not dropped")
    if "checksum/config" not in deployment["spec"]["template"]["metadata"].get("annotations", {}):
        problems.append("no checksum/config annotation")
    if container["ports"][0]["containerPort"] != config.port:
        problems.append("containerPort differs from router.config.port")
    volumes = {volume["name"] for volume in pod["volumes"]}
    mounts = container["volumeMounts"]
    if any(mount["name"] not in volumes for mount in mounts):
        problems.append("a volume mount names no pod volume")
    if tokenizer and not any(
        tokenizer == m["mountPath"].rstrip("/") or tokenizer.startswith(m["mountPath"] + "/")
        for m in mounts
    ):
        problems.append(f"router.config.tokenizer {tokenizer!r} is under no volume mount")
    what = f"{label}: router Deployment probes, security, drain"
    report.expect(not problems, what, str(problems))

    for statefulset in by_kind(docs, "StatefulSet"):
        check_vllm(report, label, statefulset, docs, config)


def check_vllm(
    report: Report,
    label: str,
    statefulset: dict[str, Any],
    docs: Docs,
    config: Config,
) -> None:
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    headless = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    problems = []
    if "--enable-prefix-caching" not in container["args"]:
        problems.append("no --enable-prefix-caching")
    if "nvidia.com/gpu" not in container["resources"].get("limits", {}):
        problems.append("no nvidia.com/gpu limit")
    if "startupProbe" not in container:
        problems.append("no startupProbe")
    if not any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"]):
        problems.append("no memory-backed /dev/shm")
    if len(headless) != 1 or headless[0]["spec"].get("publishNotReadyAddresses", False):
        problems.append("needs one headless Service that publishes only ready pods")
    elif not config.replicas_dns.startswith(headless[0]["metadata"]["name"] + "."):
        problems.append(f"router resolves {config.replicas_dns!r}, not the headless Service")
    report.expect(not problems, f"{label}: vLLM StatefulSet and headless Service", str(problems))


def check_chart(report: Report) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    check_values_cover_flags(report, values)
    check_schema_covers_config(report)
    scenarios: dict[str, dict[str, Any]] = {"default values": {}}
    for path in EXAMPLES:
        scenarios[str(path.relative_to(ROOT))] = yaml.safe_load(path.read_text()) or {}
    scenarios["static replicas, every option on"] = EVERYTHING_ON
    for label, overrides in scenarios.items():
        lint(report, label, overrides)
        try:
            manifests = render(overrides)
        except helm.HelmError as error:
            report.fail(f"{label}: does not render: {one_line(str(error))}")
            continue
        docs = list(documents(manifests))
        if not validate_manifests(report, label, docs):
            continue  # the checks below read fields that may be malformed
        check_router_pods(report, label, docs)
        check_notes(report, label, values, overrides, manifests)
        if label == "default values":
            check_dashboard_config_map(report, docs)
        check_prometheus_rule(report, label, docs)
    for label, overrides in MUST_FAIL.items():
        try:
            render(overrides)
        except helm.HelmError as error:
            report.ok(f"refused as it should be: {label} ({one_line(str(error))})")
        else:
            report.fail(f"the chart accepts values it must refuse: {label}")


def check_notes(
    report: Report,
    label: str,
    defaults: dict[str, Any],
    overrides: dict[str, Any],
    manifests: dict[str, str],
) -> None:
    """NOTES.txt warns exactly when several router pods run without engine truth."""
    (notes,) = [text for path, text in manifests.items() if path.endswith("NOTES.txt")]
    pods = overrides.get("replicaCount", defaults["replicaCount"])
    scaled = overrides.get("autoscaling", {}).get("enabled", defaults["autoscaling"]["enabled"])
    tokenizer = overrides.get("router", {}).get("config", {}).get("tokenizer", "")
    wanted = (pods > 1 or scaled) and not tokenizer
    warned = "Several router pods, no engine truth" in notes
    report.expect(
        warned == wanted,
        f"{label}: NOTES {'warn' if wanted else 'do not warn'} of router pods without engine truth",
        f"warned={warned}, expected {wanted}",
    )


def check_dashboard_config_map(report: Report, docs: Docs) -> None:
    maps = [m for m in by_kind(docs, "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")]
    if len(maps) != 1:
        report.fail(f"expected one dashboard ConfigMap, got {len(maps)}")
        return
    (content,) = maps[0]["data"].values()
    report.expect(
        maps[0]["metadata"]["labels"].get("grafana_dashboard") == "1"
        and content.strip() == DASHBOARD.read_text().strip(),
        "dashboard ConfigMap carries the sidecar label and the dashboard file",
        "label grafana_dashboard=1 missing or content differs",
    )


def check_prometheus_rule(report: Report, label: str, docs: Docs) -> None:
    """A PrometheusRule, when rendered, holds the rule file's groups as they are."""
    rules = by_kind(docs, "PrometheusRule")
    if not rules:
        return
    report.expect(
        len(rules) == 1 and rules[0]["spec"] == {"groups": rule_groups()},
        f"{label}: the PrometheusRule holds the groups of {RULES.relative_to(ROOT)}",
        f"{len(rules)} PrometheusRule(s), or a spec that differs from the file",
    )


def exported_names(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition provides, including families with no samples."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def vllm_series() -> set[str]:
    names = set(vllm_names.CURRENT) | set(vllm_names.DEPRECATED)
    for histogram in vllm_names.DASHBOARD_ONLY:
        names.update(histogram + s for s in ("_bucket", "_sum", "_count"))
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_router_metrics() -> str:
    """/metrics of the real router, started with one (unreachable) replica."""
    port = free_port()
    command = [sys.executable, "-m", "router", "--replica", "http://127.0.0.1:9"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--health-interval", "1"]
    command += ["--drain-seconds", "0"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                stderr = process.stderr.read() if process.stderr else ""
                tail = " | ".join(stderr.strip().splitlines()[-3:])
                raise RuntimeError(f"router exited with {process.returncode}: {tail}")
            try:
                return fetch(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("router did not answer /metrics within 20 s")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


def check_dashboard(report: Report, metrics_url: str | None) -> None:
    canonical, copy = DASHBOARD.read_bytes(), DASHBOARD_COPY.read_bytes()
    report.expect(
        canonical == copy,
        f"{DASHBOARD_COPY.relative_to(ROOT)} is identical to the chart's copy",
        f"differs from {DASHBOARD.relative_to(ROOT)}: copy the chart's file over it",
    )
    dashboard = json.loads(canonical)
    variables = dashboard.get("templating", {}).get("list", [])
    report.expect(
        any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables),
        "dashboard data source is a Prometheus template variable",
        "no variable of type datasource for prometheus",
    )
    try:
        source = metrics_url or "a live router"
        exposition = fetch(metrics_url) if metrics_url else live_router_metrics()
    except (OSError, RuntimeError) as error:
        report.fail(f"could not read /metrics from {source}: {error}")
        return
    known = exported_names(exposition) | vllm_series()
    exprs = list(all_exprs(dashboard))
    unknown = {name for expr in exprs for name in metric_names(substitute(expr, {}))} - known
    report.expect(
        not unknown,
        f"the dashboard's {len(exprs)} queries use only metrics of {source} or router/vllm_names",
        f"unknown metrics {sorted(unknown)}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--metrics-url",
        help="read router metrics from this URL instead of starting the router",
    )
    args = parser.parse_args()
    report = Report()
    check_chart(report)
    check_rules(report)
    check_dashboard(report, args.metrics_url)
    report.finish("deployment checks")


if __name__ == "__main__":
    main()
