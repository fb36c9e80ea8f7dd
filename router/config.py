"""Every setting of the router, its default and its help, in one place.

One path from outside to the object that uses it: defaults < YAML file (`--config`) <
`ROUTER_*` environment variables < command-line flags. `cli.py` builds the parser from the
fields below, so a new setting is one field here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, urldefrag, urlsplit

import yaml

from router.core.block_index import DEFAULT_CAPACITY
from router.core.keys import (
    DEFAULT_ANCHOR_MAX_CHARS,
    DEFAULT_PREFIX_CHARS,
    DEFAULT_SESSION_HEADER_PATTERN,
    KEY_SOURCES,
)
from router.core.loads import LOAD_SIGNALS
from router.core.placement import (
    DEFAULT_BYTES_PER_TOKEN,
    DEFAULT_CONVERSATION_TTL,
    DEFAULT_CONVERSATIONS,
    DEFAULT_FIRST_TURN_CHOICES,
)
from router.core.policies import LOOKUP_MODES, POLICY_NAMES
from router.core.response_owners import DEFAULT_RESPONSE_OWNERS, DEFAULT_RESPONSE_TTL
from router.core.ring import DEFAULT_LOAD_FACTOR, DEFAULT_VNODES

LOG_LEVELS = ("debug", "info", "warning", "error")


def setting(help: str, *, choices: tuple[str, ...] = (), group: str = "", **kw: Any) -> Any:
    """A Config field with the help text and choices that --help shows."""
    return field(metadata={"help": help, "choices": choices, "group": group}, **kw)


@dataclass
class Config:
    # --- serving
    host: str = setting("Address to listen on.", default="0.0.0.0", group="serving")
    port: int = setting("Port of the OpenAI-compatible API.", default=8000, group="serving")
    drain_seconds: float = setting(
        "On SIGTERM, stop accepting and let in-flight streams finish for up to this long.",
        default=30.0,
        group="serving",
    )
    max_body_bytes: int = setting(
        "Largest request body accepted; larger gets 413.", default=32 * 1024 * 1024, group="serving"
    )
    route_headers: bool = setting(
        "Add x-router-replica and x-router-route to responses.", default=True, group="serving"
    )
    log_level: str = setting("Log level.", default="info", choices=LOG_LEVELS, group="serving")
    # --- replicas
    replica: list[str] = setting(
        "Replica base URL (repeatable; ROUTER_REPLICA takes a comma list). A fragment sets "
        "options: http://host:8000#weight=2&header=Name:Value; its vLLM KV-cache events with "
        "kv_events=tcp://host:5557&kv_replay=tcp://host:5558 (&kv_ranks=N: data-parallel "
        "ranks, each publishing on the next port).",
        default_factory=list,
        group="replicas",
    )
    replicas_dns: str = setting(
        "HOST:PORT resolved periodically for replica addresses (a Kubernetes headless Service).",
        default="",
        group="replicas",
    )
    replicas_dns_scheme: str = setting(
        "Scheme of replicas found by DNS.",
        default="http",
        choices=("http", "https"),
        group="replicas",
    )
    dns_interval: float = setting(
        "Seconds between DNS re-resolutions.", default=10.0, group="replicas"
    )
    health_interval: float = setting(
        "Seconds between active GET /health checks of each replica.", default=5.0, group="replicas"
    )
    health_timeout: float = setting("Timeout of one health check.", default=2.0, group="replicas")
    eject_after: int = setting(
        "Consecutive failures (health checks or requests) that eject a replica.",
        default=3,
        group="replicas",
    )
    eject_backoff: float = setting(
        "First ejection lasts this long; each repeat doubles it.", default=2.0, group="replicas"
    )
    eject_backoff_max: float = setting("Longest ejection.", default=60.0, group="replicas")
    scrape_interval: float = setting(
        "Seconds between scrapes of each replica's /metrics (0 disables).",
        default=5.0,
        group="replicas",
    )
    scrape_timeout: float = setting("Timeout of one scrape.", default=3.0, group="replicas")
    # --- routing
    policy: str = setting(
        "Routing policy.", default="session", choices=POLICY_NAMES, group="routing"
    )
    key_source: str = setting(
        "What a request's key is taken from: session ids (headers, body fields), else the prompt "
        "anchor (session); or the prompt anchor alone, ignoring ids (prompt).",
        default="session",
        choices=KEY_SOURCES,
        group="routing",
    )
    load_factor: float = setting(
        "Bounded-loads factor c. session: a replica is within bound while the prefill it owes "
        "is <= c*(fleet total + the request)/n; consistent_hash: while its in-flight count is "
        "< ceil(c*(total+1)/n).",
        default=DEFAULT_LOAD_FACTOR,
        group="routing",
    )
    vnodes: int = setting(
        "Virtual nodes per replica of weight 1.", default=DEFAULT_VNODES, group="routing"
    )
    load_signal: str = setting(
        "What loads count: this router's own accounting (local); with scraped or both, the "
        "replicas' scraped running+waiting too (session: requests other routers sent, added to "
        "the fresh local work; consistent_hash: the scraped count, or the larger of both).",
        default="local",
        choices=LOAD_SIGNALS,
        group="routing",
    )
    first_turn_choices: int = setting(
        "session: ring candidates a conversation's first turn may be placed on (the first within "
        "bound in work and in KV footprint).",
        default=DEFAULT_FIRST_TURN_CHOICES,
        group="routing",
    )
    prefill_rate: float = setting(
        "session: replicas' prefill speed in estimated tokens/s, for the spill rule (0: learn "
        "each replica's from its times to first token).",
        default=0.0,
        group="routing",
    )
    bytes_per_token: float = setting(
        "Request body bytes per estimated prompt token (work is counted in these tokens).",
        default=DEFAULT_BYTES_PER_TOKEN,
        group="routing",
    )
    placement_table_size: int = setting(
        "Most conversations whose replica is remembered (session: where its cache is; "
        "consistent_hash: where it spilled).",
        default=DEFAULT_CONVERSATIONS,
        group="routing",
    )
    placement_ttl: float = setting(
        "Seconds a conversation's replica is remembered after its last turn.",
        default=DEFAULT_CONVERSATION_TTL,
        group="routing",
    )
    session_header: list[str] = setting(
        "Your own session headers, in priority order (repeatable): looked at before the client "
        "conventions table (README, Keys); per-request ids are never keys.",
        default_factory=list,
        group="routing",
    )
    client_conventions: bool = setting(
        "Key on the session headers and body fields that known clients send (Codex, Claude Code, "
        "Kilo, Roo, Cline, Open WebUI, ...; README, Keys), after your own session headers.",
        default=True,
        group="routing",
    )
    session_header_pattern: str = setting(
        "Regex of further session headers, looked at after the table ('' disables).",
        default=DEFAULT_SESSION_HEADER_PATTERN,
        group="routing",
    )
    body_key_field: list[str] = setting(
        "Your own body fields (dotted paths) that carry a session key, in order (repeatable): "
        "looked at after every header, before the table's body fields.",
        default_factory=list,
        group="routing",
    )
    prefix_chars: int = setting(
        "Characters of a completions prompt that anchor its prefix key.",
        default=DEFAULT_PREFIX_CHARS,
        group="routing",
    )
    anchor_max_chars: int = setting(
        "Longest chat anchor (system prompts + first user message) hashed.",
        default=DEFAULT_ANCHOR_MAX_CHARS,
        group="routing",
    )
    responses_table_size: int = setting(
        "Most stored Response ids whose replica is remembered (vLLM keeps stored responses in "
        "the memory of the replica that served them).",
        default=DEFAULT_RESPONSE_OWNERS,
        group="routing",
    )
    responses_ttl: float = setting(
        "Seconds a stored Response's replica is remembered after its last use; a forgotten one "
        "is located by asking the replicas.",
        default=DEFAULT_RESPONSE_TTL,
        group="routing",
    )
    responses_locate_timeout: float = setting(
        "Timeout of asking the replicas which one holds a stored Response.",
        default=5.0,
        group="routing",
    )
    # --- upstream
    max_attempts: int = setting(
        "Replicas tried per request (the first plus failovers).", default=3, group="upstream"
    )
    connect_timeout: float = setting("Upstream connect timeout.", default=5.0, group="upstream")
    first_byte_timeout: float = setting(
        "Upstream time to response headers; past it the next replica is tried.",
        default=300.0,
        group="upstream",
    )
    idle_timeout: float = setting(
        "Longest silence between two upstream body chunks.", default=300.0, group="upstream"
    )
    keepalive_timeout: float = setting(
        "Idle upstream keep-alive; stays below vLLM's 5 s so pooled connections are not stale.",
        default=4.0,
        group="upstream",
    )
    upstream_header: list[str] = setting(
        "Static NAME=VALUE header added to every upstream request (repeatable).",
        default_factory=list,
        group="upstream",
    )

    # --- security and limits
    api_key: list[str] = setting(
        "API key clients must send as 'Authorization: Bearer KEY' on /v1/* (repeatable; "
        "ROUTER_API_KEYS takes a comma list). None: the client's Authorization goes to vLLM as is.",
        default_factory=list,
        group="security",
    )
    admin_port: int = setting(
        "Serve /metrics and /router/replicas on this port only, not on --port (0: same port).",
        default=0,
        group="security",
    )
    max_inflight: int = setting(
        "Most requests in flight through the router; beyond it 429 with Retry-After (0: no limit).",
        default=4096,
        group="security",
    )
    max_header_bytes: int = setting(
        "Longest request line or header field accepted.", default=16384, group="security"
    )
    max_headers: int = setting("Most header fields per request.", default=100, group="security")
    client_idle_timeout: float = setting(
        "Seconds a client connection may sit idle or take to send its headers or body "
        "(slow clients are cut off).",
        default=60.0,
        group="security",
    )
    max_connections_per_replica: int = setting(
        "Most upstream connections to one replica; further requests wait (0: no limit).",
        default=1024,
        group="upstream",
    )
    outlier_ttft_factor: float = setting(
        "Eject a replica whose average time to first token exceeds this many times the fleet's "
        "median (0 disables).",
        default=5.0,
        group="replicas",
    )
    outlier_min_ttft: float = setting(
        "...and exceeds this many seconds: slow, not merely slower.", default=2.0, group="replicas"
    )
    # --- engine truth: vLLM's KV-cache events (docs/design.md, Engine truth)
    kv_events_port: int = setting(
        "Port of each replica's KV-event publisher (the endpoint of vLLM's kv-events-config) on "
        "the replica's host, for replicas whose spec has no kv_events= (those found by DNS); "
        "0: none.",
        default=0,
        group="events",
    )
    kv_replay_port: int = setting(
        "Port of each replica's KV-event replay socket (replay_endpoint), likewise; 0: none "
        "(missed events are then lost).",
        default=0,
        group="events",
    )
    kv_events_ranks: int = setting(
        "Data-parallel ranks of each replica whose spec has no kv_ranks=: rank r publishes on "
        "the events port + r and replays on the replay port + r, as vLLM offsets them.",
        default=1,
        group="events",
    )
    kv_events_topic: str = setting(
        "Topic prefix to subscribe to ('' takes every topic).", default="", group="events"
    )
    kv_index_blocks: int = setting(
        "Most blocks indexed per engine and medium until its /metrics gives num_gpu_blocks.",
        default=DEFAULT_CAPACITY,
        group="events",
    )
    tokenizer: str = setting(
        "Folder with the served model's tokenizer.json and tokenizer_config.json (its "
        "chat_template), to find the blocks of a request's prompt ('' disables).",
        default="",
        group="events",
    )
    kv_lookup: str = setting(
        "session: when to tokenize a request and ask the replicas' events where its prompt is "
        "cached: never; doubt (a later turn this router has not seen, a replica gone, a "
        "prompt-anchor key, a spill); always. Needs --tokenizer and replicas with events.",
        default="doubt",
        choices=LOOKUP_MODES,
        group="events",
    )
    kv_pressure: bool = setting(
        "session: first turns also weigh each replica's KV evictions per second, from its events "
        "(off by default: measured, it did not help; docs/design.md).",
        default=False,
        group="events",
    )

    @property
    def replica_specs(self) -> list[ReplicaSpec]:
        return [parse_replica(text) for text in self.replica]

    @property
    def static_headers(self) -> dict[str, str]:
        return dict(_name_value(text, "=") for text in self.upstream_header)

    def validate(self) -> None:
        if bool(self.replica) == bool(self.replicas_dns):
            raise ConfigError("give replicas with --replica or --replicas-dns (exactly one)")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{flag(f.name)} must be one of {', '.join(choices)}")
        if self.load_factor < 1.0:
            raise ConfigError("--load-factor must be >= 1.0")
        if self.max_attempts < 1 or self.vnodes < 1 or self.first_turn_choices < 1:
            raise ConfigError("--max-attempts, --vnodes and --first-turn-choices must be >= 1")
        if self.bytes_per_token <= 0 or self.prefill_rate < 0:
            raise ConfigError("--bytes-per-token must be > 0 and --prefill-rate >= 0")
        if self.responses_locate_timeout <= 0 or self.responses_ttl < 0:
            raise ConfigError("--responses-locate-timeout must be > 0 and --responses-ttl >= 0")
        if self.replicas_dns and ":" not in self.replicas_dns:
            raise ConfigError("--replicas-dns takes HOST:PORT")
        if not 0 <= self.kv_events_port < 65536 or not 0 <= self.kv_replay_port < 65536:
            raise ConfigError("--kv-events-port and --kv-replay-port must be ports (0: none)")
        if self.tokenizer and not os.path.exists(os.path.join(self.tokenizer, "tokenizer.json")):
            raise ConfigError(f"--tokenizer {self.tokenizer}: no tokenizer.json there")
        if self.kv_events_ranks < 1 or self.kv_index_blocks < 1:
            raise ConfigError("--kv-events-ranks and --kv-index-blocks must be >= 1")
        self.replica_specs  # noqa: B018 - parse now so that a bad spec fails at start-up
        self.static_headers  # noqa: B018


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ReplicaSpec:
    url: str
    weight: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict)
    kv_events: str = ""  # its KV-event publisher, tcp://host:port ("" : from --kv-events-port)
    kv_replay: str = ""  # its replay socket
    kv_ranks: int = 0  # data-parallel ranks (0: --kv-events-ranks)


@dataclass(frozen=True)
class EventEndpoints:
    """Where one data-parallel rank of a replica publishes its KV-cache events."""

    rank: int
    publisher: str
    replay: str  # "" when there is no replay socket


def parse_replica(text: str) -> ReplicaSpec:
    url, fragment = urldefrag(text.strip())
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"replica {url!r} must be an http:// or https:// URL")
    weight, headers = 1.0, {}
    events: dict[str, str] = {}
    for name, value in parse_qsl(fragment):
        if name == "weight":
            weight = float(value)
        elif name == "header":
            key, val = _name_value(value, ":")
            headers[key] = val
        elif name in ("kv_events", "kv_replay", "kv_ranks"):
            events[name] = value
        else:
            raise ConfigError(f"unknown replica option {name!r} in {text!r}")
    for name in ("kv_events", "kv_replay"):
        if events.get(name) and not events[name].startswith(("tcp://", "ipc://")):
            raise ConfigError(f"{name} in {text!r} must be a tcp:// or ipc:// address")
    ranks = int(events.get("kv_ranks", "0"))
    if ranks < 0:
        raise ConfigError(f"kv_ranks in {text!r} must be >= 1")
    return ReplicaSpec(
        url.rstrip("/"),
        weight,
        headers,
        events.get("kv_events", ""),
        events.get("kv_replay", ""),
        ranks,
    )


def event_endpoints(spec: ReplicaSpec, config: Config) -> list[EventEndpoints]:
    """The publishers of a replica's KV-cache events, one per data-parallel rank; none when it
    has no kv_events= and no --kv-events-port applies."""
    host = urlsplit(spec.url).hostname or ""
    host = f"[{host}]" if ":" in host else host
    publisher = spec.kv_events or (
        f"tcp://{host}:{config.kv_events_port}" if config.kv_events_port else ""
    )
    if not publisher:
        return []
    replay = spec.kv_replay or (
        f"tcp://{host}:{config.kv_replay_port}" if config.kv_replay_port else ""
    )
    ranks = spec.kv_ranks or config.kv_events_ranks
    return [
        EventEndpoints(rank, offset_endpoint(publisher, rank), offset_endpoint(replay, rank))
        for rank in range(ranks)
    ]


def offset_endpoint(endpoint: str, rank: int) -> str:
    """vLLM's address of data-parallel rank `rank` for a configured endpoint: the TCP port plus
    the rank (port 0 stays 0), or an ipc/inproc path with `_dp<rank>` appended."""
    if not endpoint or rank == 0:
        return endpoint
    if endpoint.startswith("tcp://"):
        base, _, port = endpoint.rpartition(":")
        return endpoint if int(port) == 0 else f"{base}:{int(port) + rank}"
    return f"{endpoint}_dp{rank}"


def _name_value(text: str, sep: str) -> tuple[str, str]:
    name, found, value = text.partition(sep)
    if not found or not name.strip():
        raise ConfigError(f"expected NAME{sep}VALUE, got {text!r}")
    return name.strip(), value.strip()


def flag(name: str) -> str:
    return name.replace("_", "-")


def env_name(name: str) -> str:
    return "ROUTER_" + name.upper()


def coerce(name: str, raw: Any) -> Any:
    """Turn a YAML or environment value into the field's type."""
    kind = {f.name: f.type for f in fields(Config)}[name]
    if kind == "list[str]":
        if isinstance(raw, str):
            return [part.strip() for part in raw.split(",") if part.strip()]
        return [_replica_entry(v) if isinstance(v, dict) else str(v) for v in raw]
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return str(raw)


def _replica_entry(entry: Mapping[str, Any]) -> str:
    """A YAML replica given as {url, weight, headers, kv_events, kv_replay, kv_ranks} becomes the
    flag's URL#options form."""
    url = str(entry["url"])
    options = [f"weight={entry['weight']}"] if "weight" in entry else []
    options += [f"header={k}:{v}" for k, v in (entry.get("headers") or {}).items()]
    options += [f"{k}={entry[k]}" for k in ("kv_events", "kv_replay", "kv_ranks") if k in entry]
    return url + ("#" + "&".join(options) if options else "")


def load_file(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    names = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name == "replicas":
            name = "replica"
        if name not in names:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[name] = coerce(name, raw)
    return values


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Config):
        for env in (env_name(f.name), env_name(f.name) + "S"):  # ROUTER_REPLICAS reads naturally
            if env in environ:
                values[f.name] = coerce(f.name, environ[env])
    return values


def default_of(name: str) -> Any:
    f = {f.name: f for f in fields(Config)}[name]
    if f.default is not MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]
