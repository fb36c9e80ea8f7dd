"""OpenAI request validation and response shapes, as vLLM's OpenAI server writes them."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .tokenizer import json_piece, render_chat


class ApiError(Exception):
    """A request vLLM would refuse; rendered as ``{"error": {...}}`` with its status."""

    def __init__(
        self, message: str, param: str | None = None, status: HTTPStatus = HTTPStatus.BAD_REQUEST
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status

    def body(self) -> dict[str, Any]:
        """vLLM's ErrorResponse: message, type (e.g. BadRequestError), param, numeric code."""
        kind = {
            HTTPStatus.BAD_REQUEST: "BadRequestError",
            HTTPStatus.NOT_FOUND: "NotFoundError",
        }.get(self.status, "InternalServerError")
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": int(self.status),
            }
        }


@dataclass
class GenerationRequest:
    """A validated chat or completion request, reduced to what the engine needs."""

    kind: str  # "chat" or "completion"
    prompt_text: str | None
    prompt_ids: list[int] | None
    max_tokens: int | None
    stream: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("Request body must be a JSON object")
    return body


def parse_chat(body: dict[str, Any], served_model: str) -> GenerationRequest:
    """Validate a /v1/chat/completions body."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError("Field required: messages", "messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of messages", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(f"messages[{i}] must be an object with a string role", "messages")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(f"messages[{i}].content must be a string or a list of parts", "messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return GenerationRequest(
        kind="chat",
        prompt_text=render_chat(messages),
        prompt_ids=None,
        max_tokens=_max_tokens(max_tokens),
        **_common(body, served_model),
    )


def parse_completion(body: dict[str, Any], served_model: str) -> GenerationRequest:
    """Validate a /v1/completions body (one prompt: a string or a list of token ids)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    text: str | None = None
    ids: list[int] | None = None
    if isinstance(prompt, str):
        text = prompt
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        ids = list(prompt)
    elif prompt is None:
        raise ApiError("Field required: prompt", "prompt")
    else:
        raise ApiError("prompt must be a string or a list of token ids (one prompt)", "prompt")
    return GenerationRequest(
        kind="completion",
        prompt_text=text,
        prompt_ids=ids,
        max_tokens=_max_tokens(body.get("max_tokens")),
        **_common(body, served_model),
    )


def _max_tokens(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError("max_tokens must be an integer", "max_tokens")
    if value < 1:
        raise ApiError(f"max_tokens must be at least 1, got {value}.", "max_tokens")
    return value


def _common(body: dict[str, Any], served_model: str) -> dict[str, Any]:
    model = body.get("model")
    if model is not None and model != served_model:
        raise ApiError(f"The model `{model}` does not exist.", "model", HTTPStatus.NOT_FOUND)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError("stream must be a boolean", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise ApiError("stream_options must be an object", "stream_options")
        if not stream:
            raise ApiError(
                "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        include_usage = bool(options.get("include_usage", False))
    return {"stream": stream, "include_usage": include_usage}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The usage object, with vLLM's prompt_tokens_details.cached_tokens."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class ResponseWriter:
    """Bodies and SSE events of one response; per-token work is string concatenation only."""

    def __init__(self, kind: str, model: str) -> None:
        self.kind = kind
        self.id = f"chatcmpl-{uuid.uuid4().hex}" if kind == "chat" else f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        head = (
            f'data: {{"id":"{self.id}","object":"%s","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,'
        )
        if kind == "chat":
            self._head = head % "chat.completion.chunk" + '"delta":{"content":'
            self._tail = '},"logprobs":null,"finish_reason":'
        else:
            self._head = head % "text_completion" + '"text":'
            self._tail = ',"logprobs":null,"finish_reason":'

    def first_event(self) -> bytes:
        """The chat stream's opening chunk, carrying the assistant role (b"" for completions)."""
        if self.kind != "chat":
            return b""
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def text_event(self, pieces: list[str], finish_reason: str | None) -> bytes:
        """One chunk carrying the text of `pieces` (several when the stream fell behind)."""
        text = json_piece(pieces[0]) if len(pieces) == 1 else json.dumps("".join(pieces))
        if finish_reason is None:
            end = "null}]}\n\n"
        else:
            end = f'"{finish_reason}","stop_reason":null}}]}}\n\n'
        return (self._head + text + self._tail + end).encode()

    def usage_event(self, usage_body: dict[str, Any]) -> bytes:
        """The include_usage chunk: no choices, only usage."""
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_body,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def full_body(
        self, text: str, finish_reason: str, usage_body: dict[str, Any]
    ) -> dict[str, Any]:
        """The non-streaming response."""
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_body,
        }


DONE_EVENT = b"data: [DONE]\n\n"
