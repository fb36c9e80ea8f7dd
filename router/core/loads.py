"""How busy each replica is, as this router accounts it: what the policies weigh.

Pure: the proxy reports each request's start and end, the scraper each replica's own queue depth,
the replica set who is a member and who is healthy. Only healthy replicas appear in `table`:
absence is how the policies learn that a replica is out (docs/design.md, "Load").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# Which load the bounded walk weighs: in flight through this router, the replicas' own scraped
# running + waiting (shared by every router instance, but seconds old), or the larger of both.
LOAD_SIGNALS = ("local", "scraped", "both")


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


@dataclass(eq=False, slots=True)
class ReplicaLoad:
    """One member's account. A request keeps the account it started on, so a replica that left
    and came back mid-request (a new account) is never decremented for it."""

    url: str
    inflight: int = 0
    scraped: float = 0.0  # running + waiting, from the replica's /metrics
    healthy: bool = False


class Loads:
    """Every member's account, and the table of healthy replicas' loads the policies read."""

    def __init__(self, signal: str) -> None:
        if signal not in LOAD_SIGNALS:
            raise ValueError(f"load signal must be one of {', '.join(LOAD_SIGNALS)}")
        self.signal = signal
        self.table = LoadTable()
        self._accounts: dict[str, ReplicaLoad] = {}

    # --- membership and health, from the replica set
    def set_members(self, urls: Iterable[str]) -> None:
        wanted = set(urls)
        for url in list(self._accounts):
            if url not in wanted:
                del self._accounts[url]
                self.table.remove(url)
        for url in wanted:
            self._accounts.setdefault(url, ReplicaLoad(url))

    def set_healthy(self, url: str, healthy: bool) -> None:
        account = self._accounts.get(url)
        if account is None:
            return
        account.healthy = healthy
        if healthy:
            self.table.set(url, self._value(account))
        else:
            self.table.remove(url)

    # --- requests, from the proxy
    def start(self, url: str) -> ReplicaLoad | None:
        """A request went to `url`; returns the account to `finish` it on."""
        account = self._accounts.get(url)
        if account is not None:
            account.inflight += 1
            self._update(account)
        return account

    def finish(self, account: ReplicaLoad) -> bool:
        """A request ended; False when its replica left (and maybe rejoined) meanwhile."""
        account.inflight -= 1
        if self._accounts.get(account.url) is not account:
            return False
        self._update(account)
        return True

    # --- the replicas' own figures, from the scraper
    def set_scraped(self, url: str, running: float, waiting: float) -> None:
        account = self._accounts.get(url)
        if account is not None:
            account.scraped = running + waiting
            self._update(account)

    def inflight(self, url: str) -> int:
        account = self._accounts.get(url)
        return account.inflight if account is not None else 0

    def _value(self, account: ReplicaLoad) -> float:
        if self.signal == "scraped":
            return account.scraped
        if self.signal == "both":
            return max(float(account.inflight), account.scraped)
        return float(account.inflight)

    def _update(self, account: ReplicaLoad) -> None:
        if account.healthy:
            self.table.set(account.url, self._value(account))
