"""A small, fast OpenAI-compatible upstream with knobs for delays and failures.

Not a model of vLLM (that is bench/mock_vllm): this one exists to make proxy behaviour easy to
provoke and observe: it streams `chunks` SSE chunks, can answer a status, hang before the first
byte, or die mid-stream, records what it received and whether a client went away, and serves
vLLM-style prefix-cache counters on /metrics. It also stores Responses in its own memory as vLLM
does (`/v1/responses`, `/v1/responses/{id}`), answers `/v1/messages`, and echoes vLLM's other
endpoints (`ECHOED`). Tests run it in-process (`FakeUpstream.app()`);
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
import uuid
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


# vLLM endpoints the fake answers by echoing what it received (path, size, content type).
ECHOED = (
    "/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/v1/score", "/rerank",
    "/v1/rerank", "/v2/rerank", "/inference/v1/generate", "/v1/audio/transcriptions",
    "/v1/audio/translations", "/v1/messages/count_tokens",
)  # fmt: skip


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
        # Like vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1: stored responses live in this process.
        self.stored: dict[str, dict[str, Any]] = {}

    def app(self, fault_control: bool = False) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/responses", self.create_response)
        app.router.add_route("*", "/v1/responses/{response_id}", self.stored_response)
        app.router.add_route("*", "/v1/responses/{response_id}/{action}", self.stored_response)
        app.router.add_post("/v1/messages", self.messages)
        for path in ECHOED:
            app.router.add_post(path, self.echo)
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

    # --- vLLM's other APIs: stored Responses, Anthropic Messages, endpoints echoed back

    def record(self, request: web.Request, body: Any) -> None:
        self.seen.requests.append(
            {"headers": dict(request.headers), "body": body, "path": request.path}
        )

    async def create_response(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses: stored in this process, as vLLM stores them (at the end)."""
        body = await request.json()
        self.record(request, body)
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return response_not_found(previous)
        response = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "previous_response_id": previous,
            "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": "ok"}],
        }
        if not body.get("stream"):
            if body.get("store", True):
                self.stored[response["id"]] = response
            return web.json_response(response, headers={"x-served-by": self.name})
        reply = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-served-by": self.name}
        )
        await reply.prepare(request)
        created = {"response": {**response, "status": "in_progress"}, "type": "response.created"}
        # The first event split over two writes: the router must join it before reading it.
        first = f"event: response.created\ndata: {json.dumps(created)}\n\n".encode()
        await reply.write(first[:20])
        await reply.write(first[20:])
        for i in range(self.behaviour.chunks):
            delta = {"type": "response.output_text.delta", "delta": f"t{i}"}
            await reply.write(f"event: {delta['type']}\ndata: {json.dumps(delta)}\n\n".encode())
        if body.get("store", True):
            self.stored[response["id"]] = response
        done = {"response": response, "type": "response.completed"}
        await reply.write(f"event: response.completed\ndata: {json.dumps(done)}\n\n".encode())
        await reply.write_eof()
        return reply

    async def stored_response(self, request: web.Request) -> web.Response:
        """GET/DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items."""
        await request.read()
        self.record(request, None)
        response_id = request.match_info["response_id"]
        stored = self.stored.get(response_id)
        if stored is None:
            return response_not_found(response_id)
        action = request.match_info.get("action")
        if request.method == "DELETE" and action is None:
            del self.stored[response_id]
            return web.json_response({"id": response_id, "object": "response", "deleted": True})
        if action == "input_items":
            return web.json_response({"object": "list", "data": []})
        if action == "cancel":
            stored["status"] = "cancelled"
        return web.json_response(stored, headers={"x-served-by": self.name})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages, as vLLM's Anthropic-compatible endpoint answers it."""
        body = await request.json()
        self.record(request, body)
        message = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        if not body.get("stream"):
            return web.json_response(message, headers={"x-served-by": self.name})
        reply = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-served-by": self.name}
        )
        await reply.prepare(request)
        text = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": "ok"}
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": {**message, "content": []}},
            {"type": "content_block_start", "index": 0, "content_block": text},
            {"type": "content_block_delta", "index": 0, "delta": delta},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
            {"type": "message_stop"},
        ]
        for event in events:
            await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await reply.write_eof()
        return reply

    async def echo(self, request: web.Request) -> web.Response:
        raw = await request.read()
        json_body = request.content_type == "application/json"
        self.record(request, json.loads(raw) if json_body and raw else None)
        self.seen.requests[-1]["raw"] = raw
        return web.json_response(
            {"path": request.path, "bytes": len(raw), "content_type": request.content_type},
            headers={"x-served-by": self.name},
        )


def response_not_found(response_id: str) -> web.Response:
    """vLLM's own answer for a response id it does not hold."""
    error = {
        "message": f"Response with id '{response_id}' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    return web.json_response({"error": error}, status=404)


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
