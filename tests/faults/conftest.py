"""Processes and the results table of the fault-injection suite (`make test-faults`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.endpoints import NotUp, router_command, wait_until_up_async
from tests.conftest import ROOT, free_port

TABLE_PATH = Path(__file__).with_name("last_run.md")
TABLE_KEY = pytest.StashKey["FaultTable"]()


class Process:
    """A child process whose output goes to a file (a full pipe would stall it)."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def wait_http(self, url: str, timeout: float = 20.0) -> None:
        try:
            await wait_until_up_async(url, self.proc, timeout)
        except NotUp as error:
            raise AssertionError(f"{error}: {self.output()}") from None


class Upstream(Process):
    """`python -m bench.checks.fake_upstream --fault-control`: a fake replica whose faults can be
    switched on."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        chunks: int = 8,
        chunk_delay: float = 0.02,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        command = [sys.executable, "-m", "bench.checks.fake_upstream", "--fault-control"]
        command += ["--host", host, "--port", str(self.port), "--name", name]
        command += ["--chunks", str(chunks), "--chunk-delay", str(chunk_delay)]
        super().__init__(command, log_dir / f"{name}.log")

    async def fault(self, **changes: Any) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "/_fault", json=changes) as response:
                assert response.status == 200, await response.text()


class Router(Process):
    """`python -m router` on 127.0.0.1 with the given flags."""

    def __init__(self, flags: list[str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = router_command(self.port, "--log-level", "warning", *flags)
        super().__init__(command, log_dir / "router.log")

    async def wait_ready(self) -> None:
        await self.wait_http(self.url + "/ready")

    async def inflight(self) -> dict[str, int]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url + "/router/replicas") as response:
                rows = (await response.json())["replicas"]
        return {row["url"]: row["inflight"] for row in rows}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    """Every process a test starts; all are killed at its end."""
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
def start_upstream(processes: list[Process], tmp_path: Path) -> Callable[..., Upstream]:
    def start(name: str, **kw: Any) -> Upstream:
        upstream = Upstream(name, tmp_path, **kw)
        processes.append(upstream)
        return upstream

    return start


@pytest.fixture
def start_router(processes: list[Process], tmp_path: Path) -> Callable[[list[str]], Router]:
    def start(flags: list[str]) -> Router:
        router = Router(flags, tmp_path)
        processes.append(router)
        return router

    return start


COLUMNS = (
    "scenario", "sent", "ok", "clear error", "refused", "unclear", "hung",
    "lost before streaming", "sessions moved", "allowed to move", "notes",
)  # fmt: skip


@dataclass
class FaultTable:
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, **cells: object) -> None:
        row = tuple(str(cells.get(name.replace(" ", "_"), "")) for name in COLUMNS)
        self.rows.append(row)
        print("\n" + self.render())

    def render(self) -> str:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@pytest.fixture(scope="session")
def fault_table(request: pytest.FixtureRequest) -> Iterator[FaultTable]:
    """Collects one row per scenario; written to last_run.md (and $FAULTS_TABLE) at the end."""
    table = FaultTable()
    request.config.stash[TABLE_KEY] = table
    yield table
    if table.rows:
        text = "# Fault-injection run\n\n" + table.render() + "\n"
        TABLE_PATH.write_text(text)
        if os.environ.get("FAULTS_TABLE"):
            Path(os.environ["FAULTS_TABLE"]).write_text(text)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    table = config.stash.get(TABLE_KEY, None)
    if table is not None and table.rows:
        terminalreporter.section("fault-injection results")
        terminalreporter.write_line(table.render())
