"""`vllm-session-router` / `python -m router`: map flags, environment and file onto one Config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from router.config import (
    Config,
    ConfigError,
    coerce,
    default_of,
    env_name,
    flag,
    from_environment,
    load_file,
)

GROUP_TITLES = {
    "serving": "serving",
    "replicas": "replicas, health checks and metrics scraping",
    "routing": "routing",
    "upstream": "upstream requests",
    "security": "security and limits",
    "events": "engine truth: vLLM's KV-cache events and the served model's tokenizer",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-session-router",
        description="Session-affinity router for vLLM replicas. Every flag can also be set by the "
        "environment variable shown, or in the YAML file given by --config (keys are the flag "
        "names); flags win over the environment, which wins over the file.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file of settings (env ROUTER_CONFIG)."
    )
    groups = {name: parser.add_argument_group(title) for name, title in GROUP_TITLES.items()}
    for f in fields(Config):
        group = groups[f.metadata["group"]]
        choices = f.metadata["choices"]
        one_of = f" One of: {', '.join(choices)}." if choices else ""
        help_text = f"{f.metadata['help']}{one_of} [env {env_name(f.name)}]"
        name = "--" + flag(f.name)
        default = default_of(f.name)
        if f.type == "bool":
            group.add_argument(
                name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default})",
            )
        elif f.type == "list[str]":
            group.add_argument(
                name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=f"{help_text} (default: {','.join(default) or 'none'})",
            )
        else:
            group.add_argument(
                name,
                type=_coercer(f.name),
                choices=choices or None,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=f"{help_text} (default: {default if default != '' else 'none'})",
            )
    return parser


def _coercer(name: str) -> Callable[[str], Any]:
    return lambda raw: coerce(name, raw)


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Defaults < YAML file < ROUTER_* environment < flags; validated."""
    args = vars(build_parser().parse_args(argv))
    env = environ if environ is not None else __import__("os").environ
    values: dict[str, Any] = {}
    config_file = args.pop("config", None) or env.get("ROUTER_CONFIG")
    if config_file:
        values.update(load_file(config_file))
    values.update(from_environment(env))
    values.update(args)
    config = Config(**values)
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = load_config(argv)
    except (ConfigError, OSError, ValueError) as error:
        print(f"vllm-session-router: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    from router.app import run

    run(config)
