"""A minimal blocking client for streamed OpenAI chat completions, timing every chunk.

Standard library only, one fresh connection per request (vLLM closes idle keep-alive connections
after 5 s, so a pooled one can die under a request). Used by the real-vLLM tests and by
bench/real/fit_cpu_profile.py.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamResult:
    """What one streamed completion returned, with client-side timings (seconds)."""

    content: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    content_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    finish_reason: str | None = None

    @property
    def ttft_s(self) -> float:
        """Time to the first chunk that carries content."""
        return self.content_times[0] - self.started

    @property
    def prompt_tokens(self) -> int:
        return int(self.usage.get("prompt_tokens", 0))

    @property
    def completion_tokens(self) -> int:
        return int(self.usage.get("completion_tokens", 0))

    @property
    def cached_tokens(self) -> int:
        details = self.usage.get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or 0)

    @property
    def inter_token_s(self) -> float:
        """Mean time between tokens after the first one (needs at least two tokens)."""
        tokens = self.completion_tokens or len(self.content_times)
        return (self.content_times[-1] - self.content_times[0]) / max(1, tokens - 1)


def _connect(url: str, timeout_s: float) -> http.client.HTTPConnection:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    return http.client.HTTPConnection(host, parsed.port, timeout=timeout_s)


def stream_chat(
    url: str,
    body: dict[str, Any],
    timeout_s: float = 120.0,
) -> StreamResult:
    """POST ``body`` to ``url``/v1/chat/completions with streaming and usage; time the chunks."""
    payload = dict(body, stream=True, stream_options={"include_usage": True})
    connection = _connect(url, timeout_s)
    result = StreamResult()
    try:
        result.started = time.perf_counter()
        connection.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {response.read()[:500]!r}")
        for raw_line in response:
            line = raw_line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[len(b"data:") :].strip()
            if data == b"[DONE]":
                break
            _take_chunk(result, json.loads(data), time.perf_counter())
    finally:
        connection.close()
    return result


def _take_chunk(result: StreamResult, chunk: dict[str, Any], now: float) -> None:
    if chunk.get("usage"):
        result.usage = chunk["usage"]
    for choice in chunk.get("choices") or []:
        text = (choice.get("delta") or {}).get("content")
        if text:
            result.content += text
            result.content_times.append(now)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
