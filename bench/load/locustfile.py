"""Locust users holding multi-turn, streamed chat sessions.

    locust -f bench/load/locustfile.py --host http://127.0.0.1:8000 [--headless -u 48 -r 8 -t 75s]

Each user runs sessions one after another: turn 1 sends the shared system prompt and a long
generated context, later turns a short question; the streamed answer is appended to the history,
so every prompt extends the previous prompt + answer (what a prefix cache can reuse). User i's
session j is the same text in every run with the same `--workload-seed`.

Locust entries: the HTTP request as locust measures it (time to response headers), and our own
`TTFT` (request sent -> first non-empty content delta) and `E2E` (-> end of stream), each split
into `turn=1` and `later`. `--records FILE` also writes one JSON line per request for the runner.

HttpUser (requests) with `stream=True` and `iter_content(chunk_size=None)` yields each HTTP chunk
as it arrives, so the first content delta is timed when it reaches us, not when headers do.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from locust import HttpUser, events, task
from locust.env import Environment

from bench.load.workload import (
    Workload,
    is_hot,
    session_id,
    system_prompt,
    think_seconds,
    user_message,
)

DEFAULTS = Workload()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add = parser.add_argument  # on the parser itself: groups lack locust's web UI options
    add(
        "--workload-seed",
        type=int,
        default=DEFAULTS.seed,
        env_var="BENCH_WORKLOAD_SEED",
        help="seed of every generated text; same seed, same conversations",
    )
    add(
        "--system-words",
        "--system-tokens",
        type=int,
        default=DEFAULTS.system_words,
        env_var="BENCH_SYSTEM_WORDS",
        help="shared system prompt length in words (--system-tokens: former spelling)",
    )
    add(
        "--context-words",
        "--context-tokens",
        type=int,
        default=DEFAULTS.context_words,
        env_var="BENCH_CONTEXT_WORDS",
        help="per-session document/code file in the first turn, in words",
    )
    add(
        "--followup-words",
        "--followup-tokens",
        type=int,
        default=DEFAULTS.followup_words,
        env_var="BENCH_FOLLOWUP_WORDS",
        help="length of each later user message, in words",
    )
    add(
        "--answer-tokens",
        type=int,
        default=DEFAULTS.answer_tokens,
        env_var="BENCH_ANSWER_TOKENS",
        help="max_tokens of every request",
    )
    add(
        "--turns", type=int, default=DEFAULTS.turns, env_var="BENCH_TURNS", help="turns per session"
    )
    add(
        "--think-time",
        type=float,
        default=DEFAULTS.think_time,
        env_var="BENCH_THINK_TIME",
        help="mean seconds between an answer and the next question (uniform 0.5x-1.5x)",
    )
    add(
        "--session-header",
        default="X-Session-Id",
        env_var="BENCH_SESSION_HEADER",
        help="header carrying the session id",
    )
    add(
        "--no-session-header",
        action="store_true",
        default=False,
        env_var="BENCH_NO_SESSION_HEADER",
        help="send no session id (exercise the prefix fallback)",
    )
    add(
        "--model",
        default="",
        env_var="BENCH_MODEL",
        help="model name; empty: the first id of GET /v1/models",
    )
    add(
        "--extra-body",
        default="",
        env_var="BENCH_EXTRA_BODY",
        help='JSON merged into every request body, e.g. {"temperature": 0}',
    )
    add(
        "--hot-share",
        type=float,
        default=DEFAULTS.hot_share,
        env_var="BENCH_HOT_SHARE",
        help="share of sessions that are hot (longer document, faster turns)",
    )
    add(
        "--hot-context-factor",
        type=float,
        default=DEFAULTS.hot_context_factor,
        env_var="BENCH_HOT_CONTEXT_FACTOR",
        help="a hot session's document is this many times longer",
    )
    add(
        "--hot-pace-factor",
        type=float,
        default=DEFAULTS.hot_pace_factor,
        env_var="BENCH_HOT_PACE_FACTOR",
        help="a hot session's turns come this many times faster",
    )
    add(
        "--shared-opening",
        action="store_true",
        default=DEFAULTS.shared_opening,
        env_var="BENCH_SHARED_OPENING",
        help="every session opens with the same instruction; its document comes in turn 2",
    )
    add(
        "--hosts",
        default="",
        env_var="BENCH_HOSTS",
        help="comma list of router instances; turn n of a session goes to the n-th (mod count)",
    )
    add("--records", default="", env_var="BENCH_RECORDS",
        help="write one JSON line per request to this file", include_in_web_ui=False)  # fmt: skip


def _workload(options: Any) -> Workload:
    return Workload(
        seed=int(options.workload_seed),
        system_words=int(options.system_words),
        context_words=int(options.context_words),
        followup_words=int(options.followup_words),
        answer_tokens=int(options.answer_tokens),
        turns=int(options.turns),
        think_time=float(options.think_time),
        hot_share=float(options.hot_share),
        hot_context_factor=float(options.hot_context_factor),
        hot_pace_factor=float(options.hot_pace_factor),
        shared_opening=_truthy(options.shared_opening),
    )


def _truthy(value: object) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes", "on")


class Recorder:
    """The per-request JSONL file; one per locust process, shared by its users."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def open(self, path: str) -> None:
        with self._lock:
            if self._file is None and path:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives for the run

    def write(self, record: dict[str, object]) -> None:
        if self._file is not None:
            with self._lock:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()  # the runner counts lines for its progress line

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# Locust's hooks are module-level events, so the process-wide pieces live here.
RECORDER = Recorder()
USER_NUMBERS = [itertools.count()]  # user i gets i: spawn order is deterministic
MODEL_NAME: dict[str, str] = {}


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    USER_NUMBERS[0] = itertools.count()  # a new test in the web UI replays the same users
    if environment.parsed_options is not None:
        RECORDER.open(str(environment.parsed_options.records or ""))


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    RECORDER.close()


@dataclass
class Conversation:
    user: int
    number: int
    turn: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass
class TurnResult:
    status: int = 0
    ttft_ms: float | None = None
    latency_ms: float | None = None
    text: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _content_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return str(delta.get("content") or "")


class ChatUser(HttpUser):
    """One person chatting: `turns` turns per session, then a fresh session."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.workload = _workload(options)
        self.header = None if _truthy(options.no_session_header) else str(options.session_header)
        self.model = str(options.model) or self._discover_model()
        self.extra_body = json.loads(options.extra_body) if options.extra_body else {}
        self.hosts = [h.strip().rstrip("/") for h in str(options.hosts or "").split(",") if h]
        self.number = next(USER_NUMBERS[0])
        self.sessions = itertools.count()
        self.conversation = self._new_conversation()
        self.pause = 0.0

    def wait_time(self) -> float:
        return self.pause

    def _discover_model(self) -> str:
        if "name" not in MODEL_NAME:
            response = self.client.get("/v1/models", name="GET /v1/models")
            MODEL_NAME["name"] = str(response.json()["data"][0]["id"])
        return MODEL_NAME["name"]

    def _new_conversation(self) -> Conversation:
        conversation = Conversation(user=self.number, number=next(self.sessions))
        conversation.messages.append({"role": "system", "content": system_prompt(self.workload)})
        return conversation

    @task
    def chat_turn(self) -> None:
        conv = self.conversation
        conv.turn += 1
        conv.messages.append(
            {
                "role": "user",
                "content": user_message(self.workload, conv.user, conv.number, conv.turn),
            }
        )
        sid = session_id(self.workload, conv.user, conv.number)
        headers = {self.header: sid} if self.header else {}
        body = {
            "model": self.model,
            "messages": conv.messages,
            "max_tokens": self.workload.answer_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }
        started_at = time.time()
        result, replica, route = self._stream(body, headers, conv.turn)
        kind = "turn=1" if conv.turn == 1 else "later"
        fire = self.environment.events.request.fire
        if result.ttft_ms is not None:
            fire(request_type="TTFT", name=kind, response_time=result.ttft_ms,
                 response_length=0, exception=None, context={})  # fmt: skip
        if not result.error and result.latency_ms is not None:
            fire(request_type="E2E", name=kind, response_time=result.latency_ms,
                 response_length=len(result.text), exception=None, context={})  # fmt: skip
        details = result.usage.get("prompt_tokens_details") or {}
        RECORDER.write(
            {
                "user": conv.user,
                "session": conv.number,
                "session_id": sid,
                "hot": is_hot(self.workload, conv.user, conv.number),
                "turn": conv.turn,
                "started_at": started_at,
                "ttft_ms": result.ttft_ms,
                "latency_ms": result.latency_ms,
                "prompt_tokens": result.usage.get("prompt_tokens"),
                "completion_tokens": result.usage.get("completion_tokens"),
                "cached_tokens": details.get("cached_tokens"),
                "replica": replica,
                "route": route,
                "status": result.status,
                "error": result.error,
            }
        )
        if result.error:  # the history is now uncertain: start over with a new session
            self.conversation = self._new_conversation()
            self.pause = think_seconds(self.workload, conv.user, conv.number, conv.turn)
            return
        conv.messages.append({"role": "assistant", "content": result.text})
        self.pause = think_seconds(self.workload, conv.user, conv.number, conv.turn)
        if conv.turn >= self.workload.turns:
            self.conversation = self._new_conversation()

    def _stream(
        self, body: dict[str, Any], headers: dict[str, str], turn: int
    ) -> tuple[TurnResult, str, str]:
        result = TurnResult()
        name = "chat turn=1 (headers)" if turn == 1 else "chat later (headers)"
        sent = time.perf_counter()
        path = "/v1/chat/completions"
        if self.hosts:  # several router instances with no shared state: each turn to the next
            path = self.hosts[(turn - 1) % len(self.hosts)] + path
        with self.client.post(
            path, json=body, headers=headers, stream=True,
            catch_response=True, name=name,
        ) as response:  # fmt: skip
            result.status = response.status_code
            replica = response.headers.get("x-router-replica", "")
            route = response.headers.get("x-router-route", "")
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {response.text[:200]}"
                response.failure(result.error)
                return result, replica, route
            try:
                self._read_events(response, sent, result)
            except Exception as exc:  # a broken stream is a failed request, not a crash
                result.error = f"{type(exc).__name__}: {exc}"
            if not result.error and result.ttft_ms is None:
                result.error = "stream ended without content"
            if result.error:
                response.failure(result.error)
            else:
                response.success()
        return result, replica, route

    @staticmethod
    def _read_events(response: Any, sent: float, result: TurnResult) -> None:
        pieces: list[str] = []
        pending = b""
        done = False
        for chunk in response.iter_content(chunk_size=None):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                if "error" in event:
                    raise RuntimeError(str(event["error"])[:200])
                content = _content_of(event)
                if content:
                    if result.ttft_ms is None:
                        result.ttft_ms = (time.perf_counter() - sent) * 1000
                    pieces.append(content)
                if event.get("usage"):
                    result.usage = event["usage"]
        result.latency_ms = (time.perf_counter() - sent) * 1000
        result.text = "".join(pieces)
        if not done:
            result.error = "stream ended before [DONE]"
