"""What deploys the router (the Helm chart, the Grafana dashboard, the Prometheus rules) and the
checks that prove it works: `python -m deploy.check` (offline), `python -m deploy.checks.image`,
`python -m deploy.checks.dashboard`."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "vllm-session-router"
# The chart's copy is the one to edit (a chart reads no file outside its folder); `make
# helm-check` fails while deploy/grafana/'s copy differs from it.
DASHBOARD = CHART / "dashboards" / "vllm-session-router.json"
DASHBOARD_COPY = ROOT / "deploy" / "grafana" / "vllm-session-router.json"
# Where the chart mounts the router's config file (its ConfigMap) and points --config.
ROUTER_CONFIG = Path("/etc/vllm-session-router/config.yaml")
RULES = CHART / "rules" / "vllm-session-router.rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yaml"
