"""What the benchmark measures: this router under each policy, another router, or a running one."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from bench.endpoints import router_command
from bench.runner.replicas import EngineTruth

DEFAULT_POLICIES = "session,prefix,round_robin,least_loaded"


@dataclass(frozen=True)
class Target:
    name: str
    router_args: tuple[str, ...] | None = None  # this router: python -m router ARGS
    command: str | None = None  # an external router's command template
    url: str | None = None  # already running
    session_header: bool = True
    instances: int = 1  # router processes; the client sends turn n to instance n mod instances
    events: bool = False  # the router reads the replicas' KV-cache events (engine truth)


# This router's targets by name: a policy, or a policy with the flags and client behaviour the
# name stands for.
BUILTIN: dict[str, Target] = {
    name: Target(name, ("--policy", name))
    for name in ("session", "consistent_hash", "round_robin", "random", "least_loaded")
} | {
    # The session policy keyed on the prompt anchor alone, measured without a session id.
    "prefix": Target(
        "prefix", ("--policy", "session", "--key-source", "prompt"), None, None, False
    ),
    # Consistent hashing with no load bound at all: a plain sticky hash.
    "plain_hash": Target("plain_hash", ("--policy", "consistent_hash", "--load-factor", "100")),
    # Two session routers with no shared state; every turn goes to the other instance.
    "session_2x": Target("session_2x", ("--policy", "session"), instances=2),
    # The same with engine truth: the replicas' KV-cache events and the served tokenizer.
    "session_events": Target("session_events", ("--policy", "session"), events=True),
    "session_2x_events": Target(
        "session_2x_events", ("--policy", "session"), instances=2, events=True
    ),
    "prefix_events": Target(
        "prefix_events",
        ("--policy", "session", "--key-source", "prompt"),
        session_header=False,
        events=True,
    ),
    "prefix_2x_events": Target(
        "prefix_2x_events",
        ("--policy", "session", "--key-source", "prompt"),
        session_header=False,
        instances=2,
        events=True,
    ),
}
BUILTIN_POLICIES = tuple(BUILTIN)


@dataclass(frozen=True)
class Launch:
    """How to start a target on a port, and the URL that answers once it is ready."""

    command: list[str] | str  # a string runs in a shell
    ready_url: str
    ready_statuses: range


def targets_of(args: argparse.Namespace, default_policies: str = DEFAULT_POLICIES) -> list[Target]:
    default = "" if args.router_url else default_policies
    names = [
        n.strip() for n in (args.policies if args.policies is not None else default).split(",")
    ]
    targets = []
    for name in filter(None, names):
        if name not in BUILTIN:
            raise SystemExit(f"unknown policy {name!r}; one of {', '.join(BUILTIN)}")
        targets.append(BUILTIN[name])
    for spec in args.router_cmd:
        name, sep, template = spec.partition("=")
        if not sep or not name or not template:
            raise SystemExit(f"--router-cmd wants NAME=TEMPLATE, got {spec!r}")
        targets.append(Target(name, command=template))
    for spec in args.router_url:
        name, sep, url = spec.partition("=")
        if not sep or "://" in name:
            name, url = "deployed", spec
        targets.append(Target(name, url=url.rstrip("/")))
    if not targets:
        raise SystemExit("nothing to measure: give --policies, --router-cmd or --router-url")
    if len({t.name for t in targets}) != len(targets):
        raise SystemExit("target names must be unique")
    return targets


def launch(
    target: Target,
    port: int,
    replicas: Sequence[str],
    extra: Sequence[str],
    truth: EngineTruth | None = None,
) -> Launch:
    """The command for a target the runner starts (this router, or an external one's template)."""
    base = f"http://127.0.0.1:{port}"
    if target.router_args is not None:
        with_events: tuple[str, ...] = ()
        if target.events:
            if truth is None:
                raise SystemExit(f"{target.name} needs replicas that publish KV-cache events")
            replicas = [truth.specs.get(r, r) for r in replicas]
            with_events = ("--tokenizer", truth.tokenizer)
        command = router_command(
            port,
            *target.router_args,
            *with_events,
            "--log-level",
            "warning",
            "--drain-seconds",
            "1",
            *[arg for replica in replicas for arg in ("--replica", replica)],
            *extra,
        )
        return Launch(command, f"{base}/ready", range(200, 201))
    assert target.command is not None
    template = (
        target.command.replace("{port}", str(port))
        .replace("{host}", "127.0.0.1")
        .replace("{replicas}", ",".join(replicas))
        .replace("{replica_args}", " ".join(f"--replica {shlex.quote(r)}" for r in replicas))
    )
    # Any answer below 500 will do: an external router may want a key on /v1/models.
    return Launch(template, f"{base}/v1/models", range(100, 500))
