"""The fake upstream as a process whose behaviour a test can change while traffic flows.

`POST /_fault` with a JSON object sets fields of `tests.fake_upstream.Behaviour` (for example
`{"status": 503}`, `{"hang": true}`, `{"die_after_chunks": 2}`); `{}` with `"reset": true` restores
the start-up behaviour. Being a process, it can also be killed with SIGKILL.

    python -m tests.faults.upstream --port 9001 --name up0 [--chunks 8 --chunk-delay 0.02]
"""

from __future__ import annotations

import argparse
import dataclasses

from aiohttp import web

from tests.fake_upstream import Behaviour, FakeUpstream


def control_app(upstream: FakeUpstream) -> web.Application:
    initial = dataclasses.replace(upstream.behaviour)
    names = {f.name for f in dataclasses.fields(Behaviour)}

    async def set_fault(request: web.Request) -> web.Response:
        changes = await request.json()
        if changes.pop("reset", False):
            upstream.behaviour = dataclasses.replace(initial)
        unknown = set(changes) - names
        if unknown:
            return web.json_response({"unknown": sorted(unknown)}, status=400)
        upstream.behaviour = dataclasses.replace(upstream.behaviour, **changes)
        return web.json_response(dataclasses.asdict(upstream.behaviour))

    app = upstream.app()
    app.router.add_post("/_fault", set_fault)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake upstream with a /_fault control endpoint.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    args = parser.parse_args()
    upstream = FakeUpstream(args.name, Behaviour(chunks=args.chunks, chunk_delay=args.chunk_delay))
    web.run_app(
        control_app(upstream),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
