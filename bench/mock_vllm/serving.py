"""Running a mock replica: in-process on the current loop, or as the `python -m` command."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web

from .options import MockOptions
from .server import build_app


@dataclass
class MockServer:
    """A mock replica listening on the running event loop."""

    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        """Stop listening and stop the engine."""
        await self.runner.cleanup()


async def start_server(options: MockOptions) -> MockServer:
    """Start a mock replica on the running loop; port 0 picks a free port."""
    runner = web.AppRunner(build_app(options), handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    return MockServer(runner, f"http://{host}:{port}")


def run(options: MockOptions) -> None:
    """Serve until interrupted (the command line's entry point), on uvloop where available."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    import asyncio

    async def serve() -> None:
        server = await start_server(options)
        print(f"mock vLLM ({options.profile}, speed {options.speed}) on {server.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    if loop_factory is None:
        asyncio.run(serve())
    else:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve())
