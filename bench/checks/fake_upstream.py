"""A small, fast OpenAI-compatible upstream with knobs for delays and failures.

Not a model of vLLM (that is bench/mock_vllm): this one exists to make proxy behaviour easy to
provoke and observe: it streams `chunks` SSE chunks, can answer a status, hang before the first
byte, or die mid-stream, records what it received and whether a client went away, and serves
vLLM-style prefix-cache counters on /metrics. Tests run it in-process (`FakeUpstream.app()`);
bench/checks/overhead.py and the fault-injection suite run it as a process:

    python -m bench.checks.fake_upstream --port 9001 [--chunks 50] [--fault-control]

With `--fault-control`, `POST /_fault` with a JSON object sets fields of `Behaviour` while traffic
flows (for example `{"status": 503}`, `{"hang": true}`, `{"die_after_chunks": 2}`); `"reset": true`
first restores the start-up behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "fake-model"


@dataclass
class Behaviour:
    chunks: int = 5
    chunk_delay: float = 0.0  # seconds between chunks
    first_byte_delay: float = 0.0  # before the response headers
    status: int = 200  # anything else: an error body with this status
    die_after_chunks: int | None = None  # close the connection after this many chunks
    hang: bool = False  # never answer
    hits_per_request: int = 0  # added to vllm:prefix_cache_hits_total per request
    queries_per_request: int = 100
    chunk_padding: int = 0  # extra bytes per chunk


@dataclass
class Seen:
    # The latest requests only: a long load must not grow the upstream without bound.
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    cancelled: int = 0  # requests whose client went away before the response ended
    completed: int = 0
    running: int = 0


class FakeUpstream:
    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.initial = dataclasses.replace(self.behaviour)
        self.seen = Seen()
        self.hits = 0
        self.queries = 0
        self.cancel_event = asyncio.Event()

    def app(self, fault_control: bool = False) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        if fault_control:
            app.router.add_post("/_fault", self.set_fault)
        return app

    async def set_fault(self, request: web.Request) -> web.Response:
        """`POST /_fault`: change the behaviour (`"reset": true` first restores the initial one)."""
        changes = await request.json()
        if changes.pop("reset", False):
            self.behaviour = dataclasses.replace(self.initial)
        unknown = set(changes) - {f.name for f in dataclasses.fields(Behaviour)}
        if unknown:
            return web.json_response({"unknown": sorted(unknown)}, status=400)
        self.behaviour = dataclasses.replace(self.behaviour, **changes)
        return web.json_response(dataclasses.asdict(self.behaviour))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({}) if self.behaviour.status != 599 else web.Response(status=500)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def metrics(self, request: web.Request) -> web.Response:
        labels = f'engine="0",model_name="{MODEL}"'
        text = (
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries (tokens).\n"
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f"vllm:prefix_cache_queries_total{{{labels}}} {float(self.queries)}\n"
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits (tokens).\n"
            "# TYPE vllm:prefix_cache_hits_total counter\n"
            f"vllm:prefix_cache_hits_total{{{labels}}} {float(self.hits)}\n"
            "# HELP vllm:num_requests_running Running requests.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(self.seen.running)}\n"
            "# HELP vllm:num_requests_waiting Waiting requests.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} 0.0\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} 0.25\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def embeddings(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"object": "list", "data": [{"embedding": [0.0, 1.0]}]})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        self.seen.requests.append(
            {"headers": dict(request.headers), "body": body, "path": request.path}
        )
        self.queries += b.queries_per_request
        self.hits += b.hits_per_request
        if b.hang:
            await asyncio.sleep(3600)
        if b.first_byte_delay:
            await asyncio.sleep(b.first_byte_delay)
        if b.status != 200:
            error = {
                "error": {"message": f"{self.name} says {b.status}", "type": "x", "code": b.status}
            }
            return web.json_response(error, status=b.status)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "ok " * b.chunks}}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": b.chunks},
                },
                headers={"x-served-by": self.name},
            )
        return await self.stream(request)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        b = self.behaviour
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-served-by": self.name}
        )
        self.seen.running += 1
        try:
            await response.prepare(request)
            pad = "x" * b.chunk_padding
            for i in range(b.chunks):
                if b.die_after_chunks is not None and i == b.die_after_chunks:
                    assert request.transport is not None
                    request.transport.close()  # abrupt: no terminating chunk
                    return response
                delta = {"index": 0, "delta": {"content": f"t{i} {pad}"}}
                chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [delta]}
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.seen.completed += 1
        except (asyncio.CancelledError, ConnectionError):
            self.seen.cancelled += 1
            self.cancel_event.set()
            raise
        finally:
            self.seen.running -= 1
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description="Fast fake OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default=f"fake-{os.getpid()}")
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument(
        "--fault-control", action="store_true", help="serve POST /_fault (see the docstring)"
    )
    args = parser.parse_args()
    upstream = FakeUpstream(args.name, Behaviour(chunks=args.chunks, chunk_delay=args.chunk_delay))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(
        upstream.app(fault_control=args.fault_control),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
