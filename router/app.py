"""Build the router's aiohttp application and own its lifecycle (start, serve, drain, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from router import metrics
from router.config import Config
from router.core.keys import KeyExtractor, KeyRules
from router.core.response_owners import stored_response_id
from router.discovery import DnsDiscovery
from router.exchange import AiohttpExchange, aiohttp_response, error_reply
from router.fleet import Fleet
from router.front import FrontServer
from router.lookup import PromptLookup
from router.proxy import UPLOAD_ROUTES, VLLM_ROUTES, ProxyHandler
from router.replicas import HealthChecker, ReplicaSet
from router.scraper import Scraper
from router.stored_responses import RESPONSES_PATH, StoredResponses
from router.subscriber import EventSubscribers
from router.upstream import UpstreamPool

log = logging.getLogger("router")

CONFIG = web.AppKey("config", Config)
FLEET = web.AppKey("fleet", Fleet)
SCRAPER = web.AppKey("scraper", Scraper)
SUBSCRIBERS = web.AppKey("subscribers", EventSubscribers)
PROXY = web.AppKey("proxy", ProxyHandler)  # made at start-up, when the loop exists
# Any rest of a path, newlines included: a decoded %0A in it must still reach a JSON answer.
ANY_TAIL = r"[\s\S]*"


def key_extractor(config: Config) -> KeyExtractor:
    rules = KeyRules(
        session_headers=tuple(config.session_header),
        session_header_pattern=config.session_header_pattern,
        body_fields=tuple(config.body_key_field),
        client_conventions=config.client_conventions,
        prefix_chars=config.prefix_chars,
        anchor_max_chars=config.anchor_max_chars,
        use_session_ids=config.key_source == "session",
    )
    return KeyExtractor(rules)


def build_app(config: Config, admin: bool | None = None) -> web.Application:
    """The whole router as an aiohttp Application; sessions and loops start with it.

    `admin` decides whether /metrics and /router/replicas are served here; by default they are
    unless --admin-port moves them to `build_admin_app`.
    """
    app = web.Application(client_max_size=config.max_body_bytes)
    fleet = Fleet(config)
    app[CONFIG] = config
    app[FLEET] = fleet

    async def proxy(request: web.Request) -> web.StreamResponse:
        return await served(request)

    async def stored_response(request: web.Request) -> web.StreamResponse:
        return await served(request, stored_response_id(request.match_info["response_id"]))

    async def upload(request: web.Request) -> web.StreamResponse:
        return await served(request, upload=True)

    async def served(
        request: web.Request, stored: str | None = None, upload: bool = False
    ) -> web.StreamResponse:
        exchange = AiohttpExchange(request)
        await app[PROXY].handle(exchange, stored, upload)
        assert exchange.response is not None
        return exchange.response

    add_probe_routes(app, fleet.replicas)
    if admin if admin is not None else not config.admin_port:
        add_admin_routes(app, app)
    # GET/DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items: to the replica holding it
    app.router.add_route("*", RESPONSES_PATH + "/{response_id}", stored_response)
    app.router.add_route("*", RESPONSES_PATH + "/{response_id}/{action}", stored_response)
    for path in UPLOAD_ROUTES:
        app.router.add_post(path, upload)
    for path in VLLM_ROUTES:
        app.router.add_post(path, proxy)
    app.router.add_route("*", "/v1/{tail:" + ANY_TAIL + "}", proxy)
    app.router.add_route("*", "/{tail:" + ANY_TAIL + "}", not_found)
    app.cleanup_ctx.append(_lifecycle)
    return app


class RouterRunner(web.AppRunner):
    """aiohttp's AppRunner with the router's front (router/front.py) where its server would be:
    the front serves the hot requests and hands every other connection to aiohttp's server."""

    async def _make_server(self) -> web.Server:
        fallback = await super()._make_server()  # starts the app: its ProxyHandler exists now
        return cast(web.Server, FrontServer(fallback, self.app[PROXY], self.app[CONFIG]))


def build_admin_app(main: web.Application) -> web.Application:
    """/metrics and /router/replicas on their own port, so they need not be public."""
    admin = web.Application()
    add_probe_routes(admin, main[FLEET].replicas)
    add_admin_routes(admin, main)
    admin.router.add_route("*", "/{tail:" + ANY_TAIL + "}", not_found)
    return admin


def add_probe_routes(app: web.Application, replicas: ReplicaSet) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        healthy = replicas.healthy_count()
        return web.json_response(
            {"ready": healthy > 0, "healthy_replicas": healthy, "replicas": len(replicas.replicas)},
            status=200 if healthy else 503,
        )

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)


def add_admin_routes(app: web.Application, main: web.Application) -> None:
    async def metrics_page(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def replica_status(request: web.Request) -> web.Response:
        scraper, subscribers = main.get(SCRAPER), main.get(SUBSCRIBERS)
        now = time.monotonic()
        rows = [
            {
                **row,
                **(scraper.status(str(row["url"]), now) if scraper else {}),
                **(subscribers.status(str(row["url"])) if subscribers else {}),
            }
            for row in main[FLEET].status(now)
        ]
        return web.json_response({"policy": main[CONFIG].policy, "replicas": rows})

    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/router/replicas", replica_status)


async def not_found(request: web.Request) -> web.Response:
    reply = error_reply(404, f"no route {request.method} {request.path}", "not_found_error")
    return aiohttp_response(reply)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config, fleet = app[CONFIG], app[FLEET]
    replicas = fleet.replicas
    # No read timeout here: the relay watches for silence itself (proxy.IdleWatch), without a
    # timer per chunk; the wait for response headers has its own deadline (--first-byte-timeout).
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout)
    # Idle keep-alive below vLLM's 5 s, so a pooled connection is never one it is closing.
    pooled = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=config.max_connections_per_replica,
        keepalive_timeout=config.keepalive_timeout,
    )
    # A proxy keeps no cookies: one client's must never reach another's request.
    session = aiohttp.ClientSession(
        connector=pooled,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    fresh = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    pool = UpstreamPool(
        connect_timeout=config.connect_timeout,
        keepalive_timeout=config.keepalive_timeout,
        limit=config.max_connections_per_replica,
    )
    app[PROXY] = ProxyHandler(
        config,
        extractor=key_extractor(config),
        policy=fleet.policy,
        loads=fleet.loads,
        replicas=replicas,
        outliers=fleet.outliers,
        responses=StoredResponses(config, replicas, session),
        pool=pool,
        session=session,
        fresh_session=fresh,
        lookup=PromptLookup(fleet.prompts, fleet.blocks) if fleet.prompts else None,
    )
    health = HealthChecker(replicas, session, config)
    loops: list[Coroutine[Any, Any, None]] = [health.run()]
    # KV-cache event subscribers follow membership from the first members on.
    subscribers = EventSubscribers(replicas, fleet.blocks, config)
    app[SUBSCRIBERS] = subscribers
    replicas.on_members.append(subscribers.members_changed)
    metrics.EVENTS.source = subscribers.rows
    if config.replicas_dns:
        dns = DnsDiscovery(replicas, config)
        await dns.refresh()
        loops.append(dns.run())
    else:
        replicas.set_members(config.replica_specs)
    await health.check_all()  # serve with real health from the first request on
    metrics.WORK.source = fleet.work
    if config.scrape_interval > 0:
        scraper = Scraper(replicas, fleet.loads, session, config, fleet.blocks)
        app[SCRAPER] = scraper
        metrics.SCRAPED.source = scraper.latest
        loops.append(scraper.run())
    tasks = [asyncio.create_task(loop) for loop in loops]
    log.info(
        "routing over %d replicas (%d healthy), policy %s",
        len(replicas.replicas), replicas.healthy_count(), config.policy,
    )  # fmt: skip
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if metrics.SCRAPED.source is getattr(app.get(SCRAPER), "latest", None):
        metrics.SCRAPED.source = None
    if metrics.WORK.source == fleet.work:
        metrics.WORK.source = None
    replicas.on_members.remove(subscribers.members_changed)
    if metrics.EVENTS.source == subscribers.rows:
        metrics.EVENTS.source = None
    await subscribers.close()
    await pool.close()
    await session.close()
    await fresh.close()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # nothing per request at info


def server_limits(config: Config) -> dict[str, Any]:
    """What the HTTP server itself enforces on clients, before a handler runs."""
    return {
        "max_line_size": config.max_header_bytes,
        "max_field_size": config.max_header_bytes,
        "max_headers": config.max_headers,
        # Armed when a connection opens: a client that does not finish its request in time,
        # or idles between requests, is cut off (slow-loris).
        "keepalive_timeout": config.client_idle_timeout,
    }


async def serve(config: Config) -> None:
    """Listen until SIGTERM/SIGINT, then stop accepting and drain in-flight streams."""
    app = build_app(config)
    runners: list[web.AppRunner] = [
        RouterRunner(
            app,
            handler_cancellation=True,  # a client that leaves cancels its upstream request
            shutdown_timeout=config.drain_seconds,
            access_log=None,
            **server_limits(config),
        )
    ]
    if config.admin_port:
        runners.append(web.AppRunner(build_admin_app(app), access_log=None, shutdown_timeout=1))
    for runner, port in zip(runners, (config.port, config.admin_port), strict=False):
        await runner.setup()
        await web.TCPSite(runner, config.host, port, shutdown_timeout=config.drain_seconds).start()
        log.info("listening on %s:%d", config.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    started = time.monotonic()
    log.info("draining in-flight requests for up to %.0fs", config.drain_seconds)
    for runner in runners:
        await runner.cleanup()
    log.info("stopped after %.1fs of draining", time.monotonic() - started)


def run(config: Config) -> None:
    configure_logging(config.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
