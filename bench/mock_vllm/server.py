"""aiohttp handlers and application lifecycle of one mock vLLM replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import protocol
from .engine import Engine, Request
from .kv_events import EventPublisher, KvEventsConfig
from .metrics import EngineMetrics
from .options import MockOptions
from .protocol import ApiError, GenerationRequest, ResponseWriter
from .scheduler import Scheduler, Sequence
from .tokenizer import answer_ids, answer_length, answer_tokens, encode

# How often the reaper looks for clients that went away.
DISCONNECT_POLL_SECONDS = 0.05


@dataclass
class Replica:
    """Everything one mock app serves from: its options, engine and in-flight requests."""

    options: MockOptions
    engine: Engine
    metrics: EngineMetrics
    active: dict[Request, web.BaseRequest]


REPLICA = web.AppKey("replica", Replica)


def build_app(options: MockOptions) -> web.Application:
    """A mock vLLM replica as an aiohttp application; its engine runs while the app runs."""
    limits = options.limits()
    profile = options.timing_profile()
    metrics = EngineMetrics(
        options.model,
        {
            "block_size": str(limits.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "gpu_memory_utilization": "0.9",
            "num_gpu_blocks": str(limits.kv_blocks),
            "prefix_caching_hash_algo": "xxhash",
        },
    )
    events = KvEventsConfig.parse(options.kv_events_config)
    scheduler = Scheduler(limits, profile, kv_events=events is not None)
    engine = Engine(scheduler, speed=options.speed, metrics=metrics)
    app = web.Application(client_max_size=64 * 1024**2)
    app[REPLICA] = Replica(options, engine, metrics, {})
    app.cleanup_ctx.append(_engine_lifecycle)
    for path in PARSERS:
        app.router.add_post(path, generate)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    app.router.add_get("/mock/stats", mock_stats)
    return app


async def _engine_lifecycle(app: web.Application) -> AsyncIterator[None]:
    replica = app[REPLICA]
    events = KvEventsConfig.parse(replica.options.kv_events_config)
    if events is not None:
        replica.engine.publisher = EventPublisher(events)
    replica.engine.start()
    reaper = asyncio.get_running_loop().create_task(_abort_disconnected(replica))
    yield
    reaper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reaper
    await replica.engine.stop()
    if replica.engine.publisher is not None:
        await replica.engine.publisher.close()


async def _abort_disconnected(replica: Replica) -> None:
    """Abort requests whose client has gone, so their blocks are freed (like vLLM)."""
    while True:
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        for request, http in list(replica.active.items()):
            transport = http.transport
            if transport is None or transport.is_closing():
                replica.active.pop(request, None)
                replica.engine.abort(request)


PARSERS = {
    "/v1/chat/completions": protocol.parse_chat,
    "/v1/completions": protocol.parse_completion,
}


async def generate(http: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions and /v1/completions."""
    replica = http.app[REPLICA]
    try:
        body = protocol.parse_json(await http.read())
        parsed = PARSERS[http.path](body, replica.options.model)
    except ApiError as exc:
        return _error(exc)
    return await _generate(http, replica, parsed)


async def _generate(
    http: web.Request, replica: Replica, parsed: GenerationRequest
) -> web.StreamResponse:
    overhead = replica.engine.scheduler.profile.request_overhead / replica.engine.speed
    if overhead:
        await asyncio.sleep(overhead)  # the API server's own work before the engine sees it
    try:
        seq = _sequence(replica.options, parsed)
        request = replica.engine.submit(seq)
    except ApiError as exc:
        return _error(exc)
    except ValueError as exc:
        return _error(ApiError(str(exc)))
    replica.active[request] = http
    writer = ResponseWriter(parsed.kind, replica.options.model)
    try:
        if parsed.stream:
            return await _stream(http, request, writer, parsed.include_usage)
        return await _complete(request, writer)
    finally:
        replica.active.pop(request, None)
        if not request.done:
            replica.engine.abort(request)


def _sequence(options: MockOptions, parsed: GenerationRequest) -> Sequence:
    if parsed.prompt_ids is not None:
        prompt_ids = parsed.prompt_ids
    else:
        prompt_ids = encode(parsed.prompt_text or "")
    if not prompt_ids:
        raise ApiError("The prompt is empty", "prompt")
    room = options.model_len() - len(prompt_ids)
    max_tokens = parsed.max_tokens if parsed.max_tokens is not None else room
    if max_tokens > room:
        raise ApiError(
            f"This model's maximum context length is {options.model_len()} tokens. However, "
            f"you requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the "
            f"messages, {max_tokens} in the completion). Please reduce the length of the "
            "messages or completion.",
            "max_tokens" if room > 0 else "messages",
        )
    natural = answer_length(
        prompt_ids, options.seed, options.min_answer_tokens, options.max_answer_tokens
    )
    count = min(natural, max_tokens)
    pieces = answer_tokens(prompt_ids, options.seed, count)
    return Sequence(
        prompt_ids=prompt_ids,
        output_ids=answer_ids(pieces),
        output_pieces=pieces,
        finish_reason="stop" if natural <= max_tokens else "length",
        arrival=asyncio.get_running_loop().time(),
    )


async def _stream(
    http: web.Request, request: Request, writer: ResponseWriter, include_usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(http)
    # Like vLLM, the role chunk waits for the first output: it marks the end of prefill.
    opening = writer.first_event()
    seq = request.seq
    while True:
        await request.ready.wait()
        pieces = request.take()
        if seq.aborted:
            return response
        if pieces:
            finish = seq.finish_reason if seq.finished else None
            # everything produced since the last write goes out as one chunk
            await response.write(opening + writer.text_event(pieces, finish))
            opening = b""
        if seq.finished:
            break
    if include_usage:
        await response.write(writer.usage_event(_usage(seq)))
    await response.write(protocol.DONE_EVENT)
    await response.write_eof()
    return response


async def _complete(request: Request, writer: ResponseWriter) -> web.Response:
    seq = request.seq
    text: list[str] = []
    while not request.done:
        await request.ready.wait()
        text.extend(request.take())
    if seq.aborted:
        return _error(ApiError("request aborted", status=protocol.HTTPStatus.SERVICE_UNAVAILABLE))
    return web.json_response(writer.full_body("".join(text), seq.finish_reason, _usage(seq)))


def _usage(seq: Sequence) -> dict[str, object]:
    return protocol.usage(seq.prompt_len, seq.num_generated, seq.num_cached)


def _error(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=int(exc.status))


async def models(http: web.Request) -> web.Response:
    """GET /v1/models."""
    options = http.app[REPLICA].options
    card = {
        "id": options.model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": options.model,
        "parent": None,
        "max_model_len": options.model_len(),
    }
    return web.json_response({"object": "list", "data": [card]})


async def health(http: web.Request) -> web.Response:
    """GET /health: 200, empty body, like vLLM."""
    return web.Response()


async def metrics_handler(http: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format."""
    body = http.app[REPLICA].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def reset_prefix_cache(http: web.Request) -> web.Response:
    """POST /reset_prefix_cache: drop cached blocks that no running request holds."""
    http.app[REPLICA].engine.reset_prefix_cache()
    return web.Response()


async def mock_stats(http: web.Request) -> web.Response:
    """GET /mock/stats: the engine loop's modelled versus achieved time, and process CPU."""
    engine = http.app[REPLICA].engine
    stats = asdict(engine.stats)
    stats["process_cpu_seconds"] = time.process_time()
    stats["wall_seconds"] = time.monotonic()
    stats["running"] = len(engine.scheduler.running)
    stats["waiting"] = len(engine.scheduler.waiting)
    stats["kv_cache_usage"] = engine.scheduler.cache.usage
    stats["evictions"] = engine.scheduler.cache.evictions
    return web.json_response(stats)
