"""Checks that run the deployment parts for real on this machine (README, Deployment):

- `python -m deploy.checks.image` (make image-check): builds the Dockerfile with podman and runs
  the image as the chart runs it;
- `python -m deploy.checks.dashboard` (make dashboard-check): a real Prometheus scrapes a router
  and its mock replicas under load and answers every query of the Grafana dashboard;
- `deploy.checks.rules`: promtool on the chart's rules (part of make helm-check).
"""
