"""A bounded load driver: concurrent multi-turn streaming sessions, one record per request.

Each session sends its turns one after another with `X-Session-Id`, streams the answer and
classifies it: `ok` (status 200 and `data: [DONE]`), `error` (a clear error: an HTTP error with a
JSON `{"error": ...}` body, or a stream that ends with `event: error`), `refused` (the router
did not accept the connection), `unclear` (anything else: a truncated stream, a non-JSON error),
or `hung` (no end within the deadline). Every loop stops by itself: by count and by time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

OUTCOMES = ("ok", "error", "refused", "unclear", "hung")


@dataclass
class Result:
    session: str
    turn: int
    replica: str | None  # x-router-replica, when the router chose one
    outcome: str
    started: bool  # a body byte of the answer reached the client
    status: int | None
    detail: str
    sent_at: float
    ended_at: float


def chat_body(session: str, turn: int) -> dict[str, object]:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a fault-injection test."},
        {"role": "user", "content": f"first question of {session}"},
    ]
    for t in range(1, turn):
        messages += [
            {"role": "assistant", "content": f"answer {t}"},
            {"role": "user", "content": f"question {t}"},
        ]
    return {"model": "fake-model", "messages": messages, "stream": True, "max_tokens": 16}


async def one_request(
    http: aiohttp.ClientSession, url: str, session: str, turn: int, deadline: float
) -> Result:
    sent = time.monotonic()
    state: dict[str, object] = {"replica": None, "started": False, "status": None}

    def result(outcome: str, detail: str) -> Result:
        return Result(
            session,
            turn,
            state["replica"],  # type: ignore[arg-type]
            outcome,
            bool(state["started"]),
            state["status"],  # type: ignore[arg-type]
            detail[:200],
            sent,
            time.monotonic(),
        )

    async def exchange() -> Result:
        async with http.post(
            url + "/v1/chat/completions",
            json=chat_body(session, turn),
            headers={"X-Session-Id": session},
        ) as response:
            state["status"] = response.status
            state["replica"] = response.headers.get("x-router-replica")
            if response.status != 200:
                raw = await response.read()
                try:
                    clear = isinstance(json.loads(raw).get("error"), dict)
                except (ValueError, AttributeError):
                    clear = False
                return result("error" if clear else "unclear", raw.decode(errors="replace"))
            done = errored = False
            async for line in response.content:
                state["started"] = True
                if line.startswith(b"event: error"):
                    errored = True
                elif line.startswith(b"data: [DONE]"):
                    done = True
            if errored:
                return result("error", "stream ended with event: error")
            return result("ok" if done else "unclear", "" if done else "truncated stream")

    try:
        return await asyncio.wait_for(exchange(), deadline)
    except asyncio.TimeoutError:
        return result("hung", f"no end within {deadline}s")
    except aiohttp.ClientConnectorError as error:
        return result("refused", str(error))
    except (aiohttp.ClientError, ConnectionError) as error:
        return result("unclear", f"{type(error).__name__}: {error}")


@dataclass
class LoadDriver:
    """N sessions in parallel, each sending turns until its count or the time is up."""

    url: str
    sessions: list[str]
    request_deadline: float = 15.0
    think_time: float = 0.02
    stop_on_refused: bool = False  # a session ends once the router refuses it
    results: list[Result] = field(default_factory=list)
    next_turn: dict[str, int] = field(default_factory=dict)

    async def run(self, seconds: float, max_turns: int = 1000) -> list[Result]:
        """Run every session for `seconds` (or `max_turns` each); returns this run's results."""
        stop_at = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            batches = await asyncio.gather(
                *(self._session(http, s, stop_at, max_turns) for s in self.sessions)
            )
        fresh = [r for batch in batches for r in batch]
        self.results += fresh
        return fresh

    async def _session(
        self, http: aiohttp.ClientSession, session: str, stop_at: float, max_turns: int
    ) -> list[Result]:
        done: list[Result] = []
        for _ in range(max_turns):
            if time.monotonic() >= stop_at:
                break
            turn = self.next_turn.get(session, 1)
            self.next_turn[session] = turn + 1
            result = await one_request(http, self.url, session, turn, self.request_deadline)
            done.append(result)
            if self.stop_on_refused and result.outcome == "refused":
                break
            await asyncio.sleep(self.think_time)
        return done


def homes(results: list[Result]) -> dict[str, str]:
    """Each session's replica in a fault-free phase (the replica of its last good answer)."""
    return {r.session: r.replica for r in results if r.outcome == "ok" and r.replica}


def moved_sessions(home: dict[str, str], results: list[Result]) -> set[str]:
    """Sessions with an answer from a replica other than their home."""
    return {
        r.session for r in results if r.replica and home.get(r.session) not in (None, r.replica)
    }


def counts(results: list[Result]) -> Counter[str]:
    return Counter(r.outcome for r in results)


def lost_before_streaming(results: list[Result]) -> list[Result]:
    """Failures with no byte streamed that the router should have failed over.

    A replica's own 500 is relayed (docs/design.md, "The request path": only 502/503 and
    connection failures fail over), so it is a clear error, not a loss; a 502/503/504 or a
    broken connection before any byte is.
    """
    return [
        r
        for r in results
        if not r.started
        and r.outcome != "ok"
        and (r.outcome in ("unclear", "hung") or r.status in (502, 503, 504))
    ]
