"""Fuzzing the router's front door (issue 7): whatever a client sends, the router answers it.

The router runs in a background thread on 127.0.0.1, in front of a fake upstream process (whose
own troubles with odd bodies are not the router's); requests go over raw HTTP (http.client) so
that bodies and headers can be malformed. Every answer must be a 4xx with
an OpenAI-style `{"error": {...}}` body, or a forwarded response (it carries x-router-replica);
never a 5xx from the router's own code, never an unhandled exception, and no request may stay
counted in flight afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bench.endpoints import wait_until_up
from router.app import FLEET, RouterRunner, build_app
from tests.conftest import ROOT, free_port, router_config

CHAT = "/v1/chat/completions"
LOGGERS = ("aiohttp.server", "aiohttp.web", "asyncio", "router")
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Errors(logging.Handler):
    """Collects error-level records: aiohttp logs an unhandled handler exception here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            return  # aiohttp's HTTP parser refused the request (a 400) before any router code
        self.records.append(record)


@dataclass
class LiveRouter:
    port: int
    app: web.Application
    loop: asyncio.AbstractEventLoop
    errors: Errors

    def send(
        self,
        body: bytes,
        headers: Sequence[tuple[str, str | bytes]] = (),
        path: str = CHAT,
        content_type: bytes | None = b"application/json",
        method: str = "POST",
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            if content_type is not None:
                connection.putheader("Content-Type", content_type)
            connection.putheader("Content-Length", str(len(body)))
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            answer = Answer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()
        return answer

    def send_chunked(self, chunks: Iterator[bytes]) -> Answer:
        """A body without Content-Length: its size is only known once it has been read."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json"}
            connection.request("POST", CHAT, body=chunks, headers=headers, encode_chunked=True)
            response = connection.getresponse()
            answer = Answer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()
        return answer

    def inflight(self) -> dict[str, int]:
        fleet = self.app[FLEET]
        counts = {url: fleet.loads.inflight(url) for url in fleet.replicas.replicas}
        counts.update({f"load:{url}": int(fleet.loads.table.get(url) or 0) for url in counts})
        for url in fleet.replicas.replicas:
            gauge = REGISTRY.get_sample_value("router_inflight_requests", {"replica": url})
            counts[f"gauge:{url}"] = int(gauge or 0)
        return counts


def serve_in_thread(upstream: str, ready: threading.Event, holder: dict[str, Any]) -> None:
    loop = asyncio.new_event_loop()
    holder["loop"] = loop

    async def start() -> None:
        app = build_app(router_config([upstream], max_body_bytes=1 << 20))
        runner = RouterRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        holder.update(app=app, port=runner.addresses[0][1], runner=runner)

    loop.run_until_complete(start())
    ready.set()
    loop.run_forever()
    loop.run_until_complete(holder["runner"].cleanup())
    loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveRouter]:
    port = free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.checks.fake_upstream",
            "--port",
            str(port),
            "--chunk-delay",
            "0.01",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    errors = Errors()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(errors)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url + "/health", upstream, timeout=20, interval=0.05)
        ready, holder = threading.Event(), dict[str, Any]()
        thread = threading.Thread(target=serve_in_thread, args=(url, ready, holder), daemon=True)
        thread.start()
        assert ready.wait(20), "router did not start"
        yield LiveRouter(holder["port"], holder["app"], holder["loop"], errors)
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        thread.join(20)
    finally:
        upstream.kill()
        upstream.wait(10)
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(errors)


@pytest.fixture(autouse=True)
def fresh_error_log(live: LiveRouter) -> None:
    live.errors.records.clear()  # a failed test must not fail the next one


def assert_answered_properly(answer: Answer) -> None:
    if "x-router-replica" in answer.headers:
        return  # forwarded: whatever the upstream said is the upstream's answer
    assert answer.status < 500, answer
    assert 400 <= answer.status < 500, answer
    if answer.headers.get("content-type", "").startswith("application/json"):
        error = json.loads(answer.body)["error"]
        assert isinstance(error, dict) and error["message"], answer
    else:
        # Only aiohttp's HTTP parser answers without JSON: a request it could not parse at all.
        assert answer.status in (400, 413, 431), answer


def assert_clean(live: LiveRouter) -> None:
    records, live.errors.records = live.errors.records, []
    assert not records, [(r.getMessage(), r.exc_text or repr(r.exc_info)) for r in records[:2]]
    for _ in range(50):  # a cancelled handler may finish a moment after its response
        if not any(live.inflight().values()):
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"left in flight: {live.inflight()}")


# --- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
content_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio", "x"]) | json_values},
        optional={
            "text": json_values,
            "image_url": json_values | st.fixed_dictionaries({"url": json_values}),
        },
    )
    | json_values,
    max_size=4,
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])
            | json_values,
            "content": st.text(max_size=40) | content_parts | json_values,
        },
    )
    | json_values,
    max_size=5,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "messages": messages | json_values,
        "prompt": st.text() | st.lists(st.integers() | json_values, max_size=5) | json_values,
        "stream": json_values,
        "prompt_cache_key": json_values,
        "session_id": json_values,
        "user": json_values,
        "metadata": st.fixed_dictionaries(
            {}, optional={"session_id": json_values, "user_id": json_values}
        )
        | json_values,
    },
)
# vLLM's other routes and the fields that route them: Messages, Responses (stored ones too),
# tokenize, pooling, score, rerank, generate.
OTHER_ROUTES = [
    "/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/tokenize", "/detokenize",
    "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v2/rerank",
    "/inference/v1/generate",
]  # fmt: skip
other_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "messages": messages | json_values,
        "system": st.text(max_size=40) | content_parts | json_values,
        "metadata": st.fixed_dictionaries({}, optional={"user_id": st.text() | json_values}),
        "input": st.text(max_size=40) | messages | json_values,
        "instructions": json_values,
        "previous_response_id": st.text(max_size=40) | json_values,
        "token_ids": st.lists(st.integers()) | json_values,
        "query": json_values,
        "text_1": json_values,
        "stream": st.booleans() | json_values,
    },
)
session_names = st.sampled_from(
    [
        "X-Session-Id",
        "x-session-affinity",
        "session-id",
        "X-Claude-Code-Session-Id",
        "x-a-session-id",
    ]
)
header_values = st.binary(max_size=300).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)


# --- tests


def test_arbitrary_bytes_as_a_body_get_a_clear_answer(live: LiveRouter) -> None:
    @FUZZ
    @given(body=st.binary(max_size=2000), path=st.sampled_from([CHAT, "/v1/completions"]))
    def check(body: bytes, path: str) -> None:
        assert_answered_properly(live.send(body, path=path))

    check()
    assert_clean(live)


def test_wrong_types_in_chat_bodies_are_forwarded_or_rejected_clearly(live: LiveRouter) -> None:
    @FUZZ
    @given(body=chat_bodies, path=st.sampled_from([CHAT, "/v1/completions", "/v1/embeddings"]))
    def check(body: dict[str, Any], path: str) -> None:
        raw = json.dumps(body).encode()
        assert_answered_properly(live.send(raw, path=path))

    check()
    assert_clean(live)


def test_invalid_utf8_inside_json_strings_is_rejected_clearly(live: LiveRouter) -> None:
    @FUZZ
    @given(junk=st.binary(min_size=1, max_size=50))
    def check(junk: bytes) -> None:
        body = b'{"messages": [{"role": "user", "content": "' + junk + b'"}], "stream": true}'
        assert_answered_properly(live.send(body))

    check()
    assert_clean(live)


def test_odd_headers_are_forwarded_or_rejected_clearly(live: LiveRouter) -> None:
    @FUZZ
    @given(
        pairs=st.lists(st.tuples(session_names, header_values), max_size=4),
        extra=st.lists(
            st.tuples(st.from_regex(r"\Ax-[a-z0-9-]{1,20}\Z"), header_values), max_size=30
        ),
    )
    def check(pairs: list[tuple[str, bytes]], extra: list[tuple[str, bytes]]) -> None:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        answer = live.send(body, headers=[*pairs, *extra])
        assert_answered_properly(answer)

    check()
    assert_clean(live)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Session-Id", "")],
        [("X-Session-Id", "a"), ("X-Session-Id", "b"), ("x-session-id", "")],
        [("X-Session-Id", "é中文🙂".encode())],
        [("X-Session-Id", "v" * 8000)],
        [("X-Session-Id", "v" * 9000)],
        [(f"x-h{i}", "v" * 50) for i in range(300)],
        [("x-session-id", " "), ("x-foo-session-id", "\t")],
    ],
    ids=["empty", "duplicated", "non-ascii", "long", "too-long", "many", "blank"],
)
def test_edge_case_headers(live: LiveRouter, headers: list[tuple[str, str | bytes]]) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    assert_answered_properly(live.send(body, headers=headers))
    assert_clean(live)


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("shape", ["list", "object", "in-messages"])
def test_deeply_nested_json_is_a_400_not_a_crash(live: LiveRouter, depth: int, shape: str) -> None:
    if shape == "list":
        body = b"[" * depth + b"]" * depth
    elif shape == "object":
        body = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        nested = b"[" * depth + b"]" * depth
        body = b'{"messages": [{"role": "user", "content": ' + nested + b"}]}"
    answer = live.send(body)
    assert_answered_properly(answer)
    if depth == 100_000:
        assert answer.status == 400
    assert_clean(live)


def test_nesting_just_below_the_parser_limit_is_forwarded(live: LiveRouter) -> None:
    nested = json.dumps([{"type": "text", "text": "x"}] * 3)
    for depth in (50, 500):
        content = "[" * depth + nested + "]" * depth
        body = f'{{"messages": [{{"role": "user", "content": {content}}}], "prompt": {content}}}'
        assert_answered_properly(live.send(body.encode()))
    assert_clean(live)


def test_huge_bodies_are_413_or_forwarded(live: LiveRouter) -> None:
    limit = 1 << 20  # the fixture's --max-body-bytes
    fits = json.dumps({"messages": [{"role": "user", "content": "x" * (limit - 100)}]})
    assert live.send(fits.encode()).status == 200
    too_big = live.send(b'{"messages": "' + b"x" * (limit + 10) + b'"}')
    assert too_big.status == 413
    assert json.loads(too_big.body)["error"]["code"] == "body_too_large"
    chunked = live.send_chunked(iter([b'{"messages": "', *[b"x" * 65536] * 20, b'"}']))
    assert chunked.status == 413
    wide = json.dumps({"messages": [{"role": "user", "content": "y"}] * 20_000}).encode()
    assert_answered_properly(live.send(wide))
    assert_clean(live)


def test_no_json_content_type_on_other_paths_is_forwarded(live: LiveRouter) -> None:
    for content_type in (None, b"text/plain", b"application/json; charset=latin-1", b"\xff"):
        answer = live.send(b"\xff\xfe not json", path="/v1/other", content_type=content_type)
        assert_answered_properly(answer)
    assert_clean(live)


def test_clients_leaving_at_any_point_leave_nothing_in_flight(live: LiveRouter) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Session-Id: leaver\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body

    @settings(max_examples=60, deadline=None)
    @given(cut=st.integers(0, len(request)), read=st.integers(0, 400))
    def check(cut: int, read: int) -> None:
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            sock.sendall(request[:cut])
            if cut == len(request) and read:
                sock.recv(read)  # part of the answer, then gone

    check()
    assert_clean(live)


def test_wrong_types_on_vllms_other_routes_are_forwarded_or_rejected_clearly(
    live: LiveRouter,
) -> None:
    @FUZZ
    @given(body=other_bodies, path=st.sampled_from(OTHER_ROUTES))
    def check(body: dict[str, Any], path: str) -> None:
        assert_answered_properly(live.send(json.dumps(body).encode(), path=path))

    check()
    assert_clean(live)


def test_any_stored_response_id_in_a_path_is_forwarded_or_rejected_clearly(
    live: LiveRouter,
) -> None:
    @settings(max_examples=150, deadline=None)
    @given(
        response_id=st.text(min_size=1, max_size=300),
        request=st.sampled_from([("GET", ""), ("DELETE", ""), ("POST", "/cancel"),
                                 ("GET", "/input_items")]),
    )  # fmt: skip
    @example(response_id="\n{", request=("GET", ""))  # once fell through to aiohttp's text 404
    def check(response_id: str, request: tuple[str, str]) -> None:
        method, suffix = request
        path = f"/v1/responses/{quote(response_id, safe='')}{suffix}"
        assert_answered_properly(live.send(b"", path=path, method=method, content_type=None))

    check()
    assert_clean(live)


def test_any_bytes_as_an_upload_are_streamed_through_or_rejected_clearly(
    live: LiveRouter,
) -> None:
    @settings(max_examples=100, deadline=None)
    @given(
        body=st.binary(max_size=4000),
        path=st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]),
        content_type=st.sampled_from(
            [b"multipart/form-data; boundary=x", b"multipart/form-data", b"application/json",
             b"\xff", None]
        ),
    )  # fmt: skip
    def check(body: bytes, path: str, content_type: bytes | None) -> None:
        assert_answered_properly(live.send(body, path=path, content_type=content_type))

    check()
    assert_clean(live)
