"""The floor under the router's overhead: the least an aiohttp relay does per streamed request.

    python -m bench.checks.floor_proxy --port 8300 --upstream http://127.0.0.1:8301

Reads the body, sends it upstream on a pooled keep-alive connection (no cookies, no redirects,
as the router's upstream session), and relays the answer chunk by chunk with the router's two
response headers. No key, no routing, no metrics, no timeouts beyond one per request: what is
left of the router's CPU per request above this is the product's own work.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def build_app(upstream: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def open_session(app: web.Application) -> None:
        session["up"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close_session(app: web.Application) -> None:
        await session["up"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with asyncio.timeout(300):
            answer = await session["up"].post(
                upstream + request.path, data=body, headers=headers, allow_redirects=False
            )
        kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP]
        response = web.StreamResponse(status=answer.status, headers=CIMultiDict(kept))
        response.headers["x-router-replica"] = upstream
        response.headers["x-router-route"] = "header/home"
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        answer.release()
        return response

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_get("/ready", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    import uvloop

    web.run_app(
        build_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        handler_cancellation=True,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
