"""The replicas and the routing state over them, wired together once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from router.config import Config, event_endpoints
from router.core.block_index import BlockIndex
from router.core.loads import Loads
from router.core.outliers import OutlierDetector
from router.core.placement import ConversationTable
from router.core.policies import Policy, make_policy
from router.core.ring import SpillTable
from router.metrics import ReplicaWork
from router.prompt_tokens import PromptTokenizer
from router.replicas import ReplicaSet


class Fleet:
    """The replicas and the routing state over them, wired so that membership and health
    changes reach the ring, the load accounting and outlier detection through one hook each."""

    def __init__(self, config: Config) -> None:
        self.policy: Policy = make_policy(
            config.policy,
            config.vnodes,
            config.load_factor,
            conversations=ConversationTable(config.placement_table_size, config.placement_ttl),
            spill=SpillTable(config.placement_table_size, config.placement_ttl),
            first_turn_choices=config.first_turn_choices,
            lookup=config.kv_lookup if engine_truth(config) else "never",
        )
        self.loads = Loads(config.load_signal, config.prefill_rate)
        self.outliers = OutlierDetector(config.outlier_ttft_factor, config.outlier_min_ttft)
        self.replicas = ReplicaSet(config)
        # Engine truth (docs/design.md): what each replica with KV-cache events has cached.
        self.config = config
        self.blocks = BlockIndex(config.kv_index_blocks)
        # The served model's tokenizer: a request's prompt tokens, to look them up in `blocks`.
        self.prompts = PromptTokenizer(config.tokenizer) if config.tokenizer else None
        self.replicas.on_members += [
            self.loads.set_members,
            self.policy.set_replicas,
            self.index_members,
        ]
        self.replicas.on_health += [self.loads.set_healthy, self.health_changed]

    def work(self) -> Iterator[ReplicaWork]:
        """The load accounting of every member, for /metrics: read when Prometheus asks, so the
        request path records none of it."""
        conversations = getattr(self.policy, "conversations", None)
        footprint = conversations.footprint if conversations is not None else None
        for account in self.loads.members():
            yield ReplicaWork(
                account.url,
                account.inflight,
                account.owed_prefill,
                account.decoding,
                account.fit.rate,
                account.fit.base,
                None if footprint is None else footprint.get(account.url, 0.0),
            )

    def index_members(self, weights: Mapping[str, float]) -> None:
        """The block index covers the members that publish KV-cache events; a replica that
        leaves (or stops publishing) is forgotten with its blocks."""
        self.blocks.set_replicas(
            url
            for url, replica in self.replicas.replicas.items()
            if replica.spec is not None and event_endpoints(replica.spec, self.config)
        )

    def health_changed(self, url: str, healthy: bool) -> None:
        self.outliers.forget(url)  # a fresh start after ejection

    def status(self, now: float) -> list[dict[str, object]]:
        table = self.loads.table
        return [
            {
                **row,
                "inflight": self.loads.inflight(str(row["url"])),
                "load": table.get(str(row["url"])),
                "ttft_average_s": _rounded(self.outliers.average(str(row["url"]))),
            }
            for row in self.replicas.status(now)
        ]


def engine_truth(config: Config) -> bool:
    """Whether the router can know where a prompt is cached: a tokenizer, and replicas that
    publish KV-cache events."""
    events = config.kv_events_port or any(spec.kv_events for spec in config.replica_specs)
    return bool(config.tokenizer and events)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
