"""Replica discovery by DNS: a Kubernetes headless Service's addresses become the members."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from router.config import Config, ReplicaSpec
from router.replicas import ReplicaSet

log = logging.getLogger("router.discovery")


class DnsDiscovery:
    """Re-resolves HOST:PORT every `dns_interval` and sets the members to its addresses."""

    def __init__(self, replicas: ReplicaSet, config: Config) -> None:
        host, _, port = config.replicas_dns.rpartition(":")
        self.replicas = replicas
        self.host = host.strip("[]")
        self.port = int(port)
        self.scheme = config.replicas_dns_scheme
        self.interval = config.dns_interval

    async def resolve(self) -> list[ReplicaSpec]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = sorted({str(info[4][0]) for info in infos})
        return [ReplicaSpec(f"{self.scheme}://{_host(a)}:{self.port}") for a in addresses]

    async def refresh(self) -> None:
        try:
            specs = await self.resolve()
        except OSError as error:
            # Keep the last known members: a DNS hiccup must not empty the fleet.
            log.warning("resolving %s failed: %s", self.host, error)
            return
        if specs and self.replicas.set_members(specs):
            log.info("replicas from DNS %s: %s", self.host, [s.url for s in specs])

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()


def _host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
