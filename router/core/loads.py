"""How busy each replica is, as this router accounts it: requests in flight and the work they owe.

Pure: the proxy reports each request's start, first token and end, the scraper each replica's own
queue depth, the replica set who is a member and who is healthy. Work is counted in estimated
prompt tokens: what a replica still has to prefill for the requests in flight (a conversation's
later turn that stays home owes only its new part), and the sequences it is decoding. Each
replica's prefill speed is learned from the router's own observations of time to first token
(docs/design.md, "Load").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

# Which load the count-bounded walk weighs, and what the work model adds: in flight through this
# router only; the replicas' own scraped running + waiting (shared by every router instance, but
# seconds old); or both (count: the larger; work: the scraped requests this router did not send,
# at the mean request's size, on top of the fresh local accounting).
LOAD_SIGNALS = ("local", "scraped", "both")
# Prefill speed assumed before a replica has been observed (estimated tokens per second).
DEFAULT_PREFILL_RATE = 10_000.0
RATE_MEMORY = 0.03  # weight of one observation in the prefill fit: about the last 30 count
RATE_MIN_SAMPLES = 8  # observations before the fit replaces the prior
MEAN_PROMPT_MEMORY = 0.05  # weight of one request in the mean uncached prompt size


class LoadTable:
    """Load of each healthy replica plus the running total that capacity needs (O(1) reads)."""

    def __init__(self, loads: Mapping[str, float] | None = None) -> None:
        self._loads: dict[str, float] = {}
        self.total = 0.0
        for replica, load in (loads or {}).items():
            self.set(replica, load)

    def set(self, replica: str, load: float) -> None:
        self.total += load - self._loads.get(replica, 0.0)
        self._loads[replica] = load

    def add(self, replica: str, delta: float) -> None:
        if replica in self._loads:
            self._loads[replica] += delta
            self.total += delta

    def remove(self, replica: str) -> None:
        self.total -= self._loads.pop(replica, 0.0)

    def get(self, replica: str) -> float | None:
        return self._loads.get(replica)

    def __contains__(self, replica: object) -> bool:
        return replica in self._loads

    def __len__(self) -> int:
        return len(self._loads)

    def items(self) -> Iterator[tuple[str, float]]:
        return iter(self._loads.items())

    def replicas(self) -> list[str]:
        return list(self._loads)


class PrefillFit:
    """Time to first token = base + tokens / rate, fitted by least squares with forgetting.

    `tokens` is what the replica had to prefill before the request's first token: the work owed
    ahead of it when it started plus its own uncached part. A configured rate is used as is.
    """

    __slots__ = ("_n", "_x", "_xx", "_xy", "_y", "base", "configured", "rate", "samples")

    def __init__(self, configured: float = 0.0) -> None:
        self.configured = configured
        self.rate = configured or DEFAULT_PREFILL_RATE  # estimated tokens per second
        self.base = 0.0  # seconds a request waits whatever its size
        self.samples = 0
        self._n = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, tokens: float, seconds: float) -> None:
        if self.configured:
            return
        keep = 1.0 - RATE_MEMORY
        self._n = self._n * keep + 1.0
        self._x = self._x * keep + tokens
        self._y = self._y * keep + seconds
        self._xx = self._xx * keep + tokens * tokens
        self._xy = self._xy * keep + tokens * seconds
        self.samples += 1
        if self.samples < RATE_MIN_SAMPLES:
            return
        spread = self._n * self._xx - self._x * self._x
        if spread <= 1e-9 * self._n * self._xx:
            return  # every observation the same size: no slope to learn yet
        slope = (self._n * self._xy - self._x * self._y) / spread
        if slope > 0:
            self.rate = 1.0 / slope
            self.base = max((self._y - slope * self._x) / self._n, 0.0)

    def seconds(self, tokens: float) -> float:
        return self.base + tokens / self.rate


@dataclass(eq=False, slots=True)
class ReplicaLoad:
    """One member's account. A request keeps the account it started on, so a replica that left
    and came back mid-request (a new account) is never decremented for it."""

    url: str
    fit: PrefillFit
    inflight: int = 0
    owed_prefill: float = 0.0  # estimated tokens still to prefill for requests in flight
    decoding: int = 0  # requests in flight past their first token
    scraped: float = 0.0  # running + waiting, from the replica's /metrics
    foreign: float = 0.0  # scraped requests this router did not send (`both`, `scraped`)
    evictions: float = 0.0  # KV blocks evicted per second, from the replica's events
    healthy: bool = False


@dataclass(eq=False, slots=True)
class Ticket:
    """One request in flight: what it owes its replica until its first token."""

    account: ReplicaLoad
    tokens: float  # estimated uncached prompt tokens
    ahead: float  # work owed on the replica when it started
    prefilling: bool = True


@dataclass(eq=False)
class Loads:
    """Every member's account; `table` holds the healthy replicas' in-flight counts."""

    signal: str = "local"
    prefill_rate: float = 0.0  # configured tokens/s; 0 learns each replica's
    table: LoadTable = field(default_factory=LoadTable)
    mean_prompt: float = 0.0  # moving mean of requests' uncached tokens (foreign work's size)
    total_owed: float = 0.0  # owed prefill summed over healthy replicas
    total_foreign: float = 0.0  # foreign requests summed over healthy replicas
    total_evictions: float = 0.0  # evictions per second summed over healthy replicas

    def __post_init__(self) -> None:
        if self.signal not in LOAD_SIGNALS:
            raise ValueError(f"load signal must be one of {', '.join(LOAD_SIGNALS)}")
        self._accounts: dict[str, ReplicaLoad] = {}

    # --- membership and health, from the replica set
    def set_members(self, urls: Iterable[str]) -> None:
        wanted = set(urls)
        for url in list(self._accounts):
            if url not in wanted:
                self.set_healthy(url, False)
                del self._accounts[url]
        for url in wanted:
            if url not in self._accounts:
                self._accounts[url] = ReplicaLoad(url, PrefillFit(self.prefill_rate))

    def set_healthy(self, url: str, healthy: bool) -> None:
        account = self._accounts.get(url)
        if account is None or account.healthy == healthy:
            return
        account.healthy = healthy
        sign = 1.0 if healthy else -1.0
        self.total_owed += sign * account.owed_prefill
        self.total_foreign += sign * account.foreign
        self.total_evictions += sign * account.evictions
        if healthy:
            self.table.set(url, self._count(account))
        else:
            self.table.remove(url)

    def members(self) -> Iterator[ReplicaLoad]:
        return iter(self._accounts.values())

    def healthy(self) -> Iterator[ReplicaLoad]:
        return (a for a in self._accounts.values() if a.healthy)

    def get(self, url: str) -> ReplicaLoad | None:
        return self._accounts.get(url)

    # --- requests, from the proxy
    def start(self, url: str, tokens: float = 0.0) -> Ticket | None:
        """A request that must prefill about `tokens` went to `url`."""
        account = self._accounts.get(url)
        if account is None:
            return None
        ticket = Ticket(account, tokens, account.owed_prefill)
        account.inflight += 1
        self._owe(account, tokens)
        self.mean_prompt += MEAN_PROMPT_MEMORY * (tokens - self.mean_prompt)
        self._update(account)
        return ticket

    def first_token(self, ticket: Ticket, ttft: float | None) -> None:
        """The request's prefill is done: its work moves to decoding; the fit learns from its
        time to first token, when it is known (a streamed response)."""
        if not ticket.prefilling:
            return
        ticket.prefilling = False
        account = ticket.account
        self._owe(account, -ticket.tokens)
        account.decoding += 1
        if ttft is not None:
            account.fit.observe(ticket.ahead + ticket.tokens, ttft)

    def finish(self, ticket: Ticket) -> bool:
        """A request ended; False when its replica left (and maybe rejoined) meanwhile."""
        account = ticket.account
        account.inflight -= 1
        if ticket.prefilling:
            self._owe(account, -ticket.tokens)
        else:
            account.decoding -= 1
        if self._accounts.get(account.url) is not account:
            return False
        self._update(account)
        return True

    # --- the replicas' own figures, from the scraper
    def set_scraped(self, url: str, running: float, waiting: float) -> None:
        account = self._accounts.get(url)
        if account is None:
            return
        account.scraped = running + waiting
        # What other routers sent, as of now; local accounting stays fresh between scrapes.
        foreign = max(account.scraped - account.inflight, 0.0)
        if account.healthy:
            self.total_foreign += foreign - account.foreign
        account.foreign = foreign
        self._update(account)

    def set_evictions(self, url: str, per_second: float) -> None:
        """How fast the replica evicts KV blocks (engine truth): how full its cache runs."""
        account = self._accounts.get(url)
        if account is None:
            return
        if account.healthy:
            self.total_evictions += per_second - account.evictions
        account.evictions = per_second

    def owed(self, account: ReplicaLoad) -> float:
        """Prefill the replica owes: this router's requests, and others' with a scraped signal."""
        if self.signal == "local":
            return account.owed_prefill
        return account.owed_prefill + account.foreign * self.mean_prompt

    def fleet_owed(self) -> float:
        if self.signal == "local":
            return self.total_owed
        return self.total_owed + self.total_foreign * self.mean_prompt

    def wait(self, account: ReplicaLoad, tokens: float) -> float:
        """Estimated time to first token on `account` of a request that must prefill `tokens`."""
        return account.fit.seconds(self.owed(account) + tokens)

    def healthy_count(self) -> int:
        return len(self.table)

    def inflight(self, url: str) -> int:
        account = self._accounts.get(url)
        return account.inflight if account is not None else 0

    def _owe(self, account: ReplicaLoad, tokens: float) -> None:
        before = account.owed_prefill
        account.owed_prefill = max(before + tokens, 0.0)
        if account.healthy:
            self.total_owed += account.owed_prefill - before

    def _count(self, account: ReplicaLoad) -> float:
        if self.signal == "scraped":
            return account.scraped
        if self.signal == "both":
            return max(float(account.inflight), account.scraped)
        return float(account.inflight)

    def _update(self, account: ReplicaLoad) -> None:
        if account.healthy:
            self.table.set(account.url, self._count(account))
