"""Fixtures shared by every test folder: fake upstreams, the router in-process or as a process."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench import ROOT
from bench.checks.fake_upstream import Behaviour, FakeUpstream
from bench.endpoints import NotUp, free_port, router_command, wait_until_up_async
from router.app import RouterRunner, build_app
from router.config import Config


def router_config(urls: list[str], **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "replica": urls,
        "host": "127.0.0.1",
        "health_interval": 0.5,
        "scrape_interval": 0,
        "first_byte_timeout": 5.0,
        "idle_timeout": 5.0,
    }
    settings.update(overrides)
    config = Config(**settings)
    config.validate()
    return config


Upstreams = Callable[..., Awaitable[list[tuple[FakeUpstream, str]]]]


@pytest.fixture
def upstreams(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstreams:
    """Start n fake upstreams; returns (upstream, base URL) pairs."""

    async def start(n: int, **behaviour: Any) -> list[tuple[FakeUpstream, str]]:
        started = []
        for i in range(n):
            fake = FakeUpstream(f"up{i}", Behaviour(**behaviour))
            server = await aiohttp_server(fake.app())
            started.append((fake, str(server.make_url("")).rstrip("/")))
        return started

    return start


Replica = Callable[..., Awaitable[str]]


@pytest.fixture
def replica(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Replica:
    """A healthy replica made of the given routes (`web.post(path, handler)`, ...): its URL."""

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({})

    async def start(*routes: web.RouteDef) -> str:
        app = web.Application()
        app.router.add_get("/health", healthy)
        app.router.add_routes(routes)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


class RouterTestServer(TestServer):
    """aiohttp's TestServer serving the router as `python -m router` does: its front first."""

    async def _make_runner(self, **kwargs: Any) -> RouterRunner:
        return RouterRunner(self.app, **kwargs)


RouterClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def router(aiohttp_client: Callable[..., Awaitable[Any]]) -> RouterClient:
    """An in-process router in front of the given URLs, with a test client."""

    async def start(urls: list[str], **overrides: Any) -> TestClient[web.Request, web.Application]:
        server = RouterTestServer(build_app(router_config(urls, **overrides)))
        client: TestClient[web.Request, web.Application] = await aiohttp_client(server)
        return client

    return start


def dead_url() -> str:
    """A URL on which nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


def chat(session: str, turns: int = 1, stream: bool = True) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"Hello from {session}"},
    ]
    for t in range(turns - 1):
        messages += [
            {"role": "assistant", "content": f"answer {t}"},
            {"role": "user", "content": f"question {t}"},
        ]
    return {"model": "fake-model", "messages": messages, "stream": stream}


class RouterProcess:
    """`python -m router` as a real process, for the tests that need signals or two routers."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            router_command(self.port, *args),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 15.0) -> None:
        try:
            await wait_until_up_async(self.url + "/ready", self.proc, timeout)
        except NotUp as error:
            raise AssertionError(f"router not ready ({error}): {self.output()}") from None

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def router_process() -> Iterator[Callable[[list[str]], RouterProcess]]:
    started: list[RouterProcess] = []

    def start(args: list[str]) -> RouterProcess:
        process = RouterProcess(args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def read_sse(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for line in response.content:
        yield line
