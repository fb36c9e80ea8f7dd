from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import build_parser, load_config
from router.config import Config, ConfigError, parse_replica


def test_flags_win_over_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("replicas: [http://a:8000]\nload-factor: 1.5\nkey-source: prompt\nvnodes: 64\n")
    env = {"ROUTER_LOAD_FACTOR": "2.0", "ROUTER_VNODES": "100"}
    config = load_config(["--config", str(path), "--vnodes", "7"], env)
    assert config.replica == ["http://a:8000"]
    assert config.key_source == "prompt"
    assert config.load_factor == 2.0
    assert config.vnodes == 7


def test_replicas_from_a_comma_list_in_the_environment() -> None:
    config = load_config([], {"ROUTER_REPLICAS": "http://a:1, http://b:2"})
    assert config.replica == ["http://a:1", "http://b:2"]


def test_replica_options_in_the_url_fragment() -> None:
    spec = parse_replica("http://gpu-0:8000/#weight=2&header=X-Pool:a100")
    assert (spec.url, spec.weight, dict(spec.headers)) == (
        "http://gpu-0:8000",
        2.0,
        {"X-Pool": "a100"},
    )


def test_yaml_replicas_may_be_objects(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("replicas:\n  - url: http://a:8000\n    weight: 3\n    headers: {X-K: v}\n")
    (spec,) = load_config(["--config", str(path)], {}).replica_specs
    assert spec.weight == 3.0
    assert dict(spec.headers) == {"X-K": "v"}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--replica", "http://a:1", "--replicas-dns", "svc:8000"],
        ["--replica", "ftp://a:1"],
        ["--replica", "http://a:1", "--load-factor", "0.5"],
        ["--replica", "http://a:1", "--upstream-header", "novalue"],
    ],
)
def test_bad_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_config(argv, {})


def test_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("replicas: [http://a:1]\nlaod_factor: 2\n")
    with pytest.raises(ConfigError, match="laod_factor"):
        load_config(["--config", str(path)], {})


def test_help_documents_every_setting() -> None:
    text = build_parser().format_help()
    for name in Config.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text
        assert "ROUTER_" + name.upper() in text


def test_readme_documents_every_flag() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    missing = [f for f in Config.__dataclass_fields__ if "--" + f.replace("_", "-") not in readme]
    assert not missing
