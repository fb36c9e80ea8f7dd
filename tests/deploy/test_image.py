"""The image check's pure parts: what the Dockerfile's FROM names, the chart's run flags, apt's
mirror, podman's ulimits (deploy/checks/image.py, debian_base.py, podman.py)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import yaml

from deploy import CHART
from deploy.checks.debian_base import Mirror, apt_mirror
from deploy.checks.host import CheckError
from deploy.checks.image import DOCKERFILE, chart_run_flags, from_images, qualified
from deploy.checks.podman import default_ulimits


def test_the_shipped_dockerfile_is_based_on_the_official_python_slim_of_the_build_arg() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert from_images(dockerfile, {}) == ["docker.io/library/python:3.12-slim"]
    assert from_images(dockerfile, {"PYTHON_VERSION": "3.11"}) == [
        "docker.io/library/python:3.11-slim"
    ]


def test_stages_scratch_and_continued_lines_are_not_base_images() -> None:
    dockerfile = (
        "ARG BASE=debian\nARG TAG=12\n"
        "FROM --platform=linux/amd64 ${BASE}:$TAG AS build\nRUN make \\\n  all\n"
        "FROM build AS test\nFROM scratch\nFROM registry.example:5000/team/app@sha256:ab\n"
    )
    assert from_images(dockerfile, {"TAG": "13"}) == [
        "docker.io/library/debian:13",
        "registry.example:5000/team/app@sha256:ab",
    ]


@pytest.mark.parametrize(
    ("short", "full"),
    [
        ("python", "docker.io/library/python:latest"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("quay.io/prometheus/prometheus:v2", "quay.io/prometheus/prometheus:v2"),
        ("localhost/base:check", "localhost/base:check"),
    ],
)
def test_short_names_resolve_as_docker_resolves_them(short: str, full: str) -> None:
    assert qualified(short) == full


def test_the_container_runs_with_the_charts_security_context() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    flags = chart_run_flags(values)
    assert flags[:2] == ["--user", "10001:10001"]
    assert {"--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"} <= set(flags)
    assert "--tmpfs=/tmp:size=64m" in flags


def test_apt_mirror_is_the_main_suite_of_a_one_line_or_deb822_source(tmp_path: Path) -> None:
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# comment\ndeb [arch=amd64] http://mirror.example/debian-security bookworm-security main\n"
        "deb http://mirror.example/debian/ bookworm main contrib\n"
    )
    assert apt_mirror(one_line, tmp_path / "none") == Mirror(
        "http://mirror.example/debian", "bookworm"
    )
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian\nSuites: trixie trixie-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://deb.example/debian-security\n"
        "Suites: trixie-security\n"
    )
    assert apt_mirror(tmp_path / "missing", folder) == Mirror("http://deb.example/debian", "trixie")
    with pytest.raises(CheckError):
        apt_mirror(tmp_path / "missing", tmp_path / "none")


def test_default_ulimits_stay_within_the_hard_limits() -> None:
    files, processes = (int(limit.split(":")[1]) for limit in default_ulimits())
    assert files <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert processes <= resource.getrlimit(resource.RLIMIT_NPROC)[1]
    assert processes <= 32768
