"""A streamed chat completion through the openai SDK, timing the arrival of every content chunk.

Used by the real-vLLM tests, bench/real/fit_cpu_profile.py and the image check. Blocking: the fit
sends concurrent requests from threads, which one SDK client allows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import openai

SENT = "timed_stream_sent_at"  # request extension: when the request was handed to the socket


@dataclass
class StreamResult:
    """What one streamed completion returned, with client-side timings (seconds)."""

    content: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    content_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    finish_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # of the HTTP response

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


def sdk_client(url: str, timeout_s: float = 120.0) -> openai.OpenAI:
    """An SDK client of the server at ``url`` (without /v1). No retries: a failure must show.
    One connection per request (`Connection: close`), so none is reused after vLLM dropped it
    (it closes idle keep-alive connections after 5 s). Only the SDK's public API: the GPU host's
    bundle may carry another major version."""
    return openai.OpenAI(
        base_url=url.rstrip("/") + "/v1",
        api_key="unused",
        max_retries=0,
        timeout=timeout_s,
        default_headers={"Connection": "close"},
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [_stamp_sent]}),
    )


def _stamp_sent(request: Any) -> None:
    # The clock starts when the request leaves, not before the SDK builds it (~2 ms of CPU).
    request.extensions[SENT] = time.perf_counter()


def stream_chat(
    client: openai.OpenAI,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> StreamResult:
    """Stream the chat completion ``body`` (model, messages, max_tokens; any other field, such
    as vLLM's logit_bias or ignore_eos, is sent as is) with usage, timing its chunks."""
    fields = dict(body)
    model, messages = fields.pop("model"), fields.pop("messages")
    result = StreamResult(started=time.perf_counter())
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=fields,
        extra_headers=dict(headers or {}),
    )
    result.headers = dict(raw.headers)
    result.started = raw.http_request.extensions.get(SENT, result.started)
    for chunk in raw.parse():
        now = time.perf_counter()
        if chunk.usage is not None:
            result.usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                result.content += choice.delta.content
                result.content_times.append(now)
            if choice.finish_reason:
                result.finish_reason = choice.finish_reason
    return result
