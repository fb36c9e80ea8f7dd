"""Routing-key extraction: which conversation does a request belong to?

First match wins: a session header, then a body field, then a hash of the conversation's anchor
(system prompt(s) + first user message, or the opening of a completions prompt), else no key.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import xxhash

DEFAULT_SESSION_HEADERS: tuple[str, ...] = (
    "x-session-id",
    "x-session-affinity",
    "x-chat-session-id",
    "x-conversation-id",
    "session-id",
)
# Covers x-claude-code-session-id, x-copilot-session-id, x-zoo-session-id, x-litellm-session-id, ...
DEFAULT_SESSION_HEADER_PATTERN = r"^x-[a-z0-9-]+-session-id$"
# Per-request identifiers: a new value every request, so hashing them would scatter a conversation.
PER_REQUEST_HEADERS: frozenset[str] = frozenset(
    {"x-request-id", "x-trace-id", "x-correlation-id", "x-amzn-trace-id", "x-b3-traceid"}
)
# `user` identifies an end user, not a chat, so it comes last.
DEFAULT_BODY_FIELDS: tuple[str, ...] = (
    "prompt_cache_key",
    "session_id",
    "metadata.session_id",
    "metadata.user_id",
    "user",
)
# What a key is taken from (`--key-source`): session ids first, else the prompt anchor; or the
# prompt anchor alone.
KEY_SOURCES = ("session", "prompt")
# Message roles (and Responses item types) that only a conversation's later turns carry.
ANSWER_ROLES = frozenset({"assistant", "tool", "function", "function_call", "function_call_output"})
DEFAULT_PREFIX_CHARS = 2048  # characters of a completions prompt that anchor it
DEFAULT_ANCHOR_MAX_CHARS = 16384  # longest anchor hashed: bounds the work per request
MAX_RAW_KEY_BYTES = 256
# The key travels upstream as X-Session-Id; HTTP clients refuse control characters in headers.
HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class KeyKind(str, Enum):
    HEADER = "header"
    BODY = "body"
    PREFIX = "prefix"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class RoutingKey:
    """The conversation identity of one request: `value` is sent upstream, `point` is hashed."""

    kind: KeyKind
    value: str
    point: int  # xxh3_64 of value: the key's position on the hash ring

    @property
    def is_none(self) -> bool:
        return self.kind is KeyKind.NONE


NO_KEY = RoutingKey(KeyKind.NONE, "", 0)


def hash_point(value: str | bytes) -> int:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return xxhash.xxh3_64_intdigest(value)


def _bounded_value(raw: str) -> str:
    """Keep short ids readable upstream; hash over-long ones so they never travel or log whole,
    and ones with control characters, which cannot travel in a header."""
    encoded = raw.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_RAW_KEY_BYTES and not HEADER_UNSAFE.search(raw):
        return raw
    return "h-" + xxhash.xxh3_128_hexdigest(encoded)


def _key(kind: KeyKind, raw: str) -> RoutingKey:
    value = _bounded_value(raw)
    return RoutingKey(kind, value, hash_point(value))


def redact(value: str) -> str:
    """A loggable stand-in for a key or header value: never the value in full."""
    return "h-" + xxhash.xxh3_64_hexdigest(value.encode("utf-8", "surrogatepass"))[:12]


@dataclass(frozen=True, slots=True)
class KeyRules:
    """What to look at, in order. `use_session_ids=False` (`--key-source prompt`) keys on the
    prompt anchor alone, whatever ids the client sends."""

    session_headers: tuple[str, ...] = DEFAULT_SESSION_HEADERS
    session_header_pattern: str = DEFAULT_SESSION_HEADER_PATTERN
    body_fields: tuple[str, ...] = DEFAULT_BODY_FIELDS
    prefix_chars: int = DEFAULT_PREFIX_CHARS
    anchor_max_chars: int = DEFAULT_ANCHOR_MAX_CHARS
    use_session_ids: bool = True


class KeyExtractor:
    """Turns (headers, parsed JSON body) into a RoutingKey (docs/design.md, "Keys")."""

    def __init__(self, rules: KeyRules | None = None) -> None:
        self.rules = rules or KeyRules()
        self._headers = tuple(h.lower() for h in self.rules.session_headers)
        pattern = self.rules.session_header_pattern
        self._pattern = re.compile(pattern, re.IGNORECASE) if pattern else None
        self._body_paths = tuple(tuple(f.split(".")) for f in self.rules.body_fields)

    def extract(self, headers: Mapping[str, str], body: Any) -> RoutingKey:
        if self.rules.use_session_ids:
            key = self.from_headers(headers) or self.from_body(body)
            if key is not None:
                return key
        return self.from_prompt(body) or NO_KEY

    def from_headers(self, headers: Mapping[str, str]) -> RoutingKey | None:
        # aiohttp's CIMultiDict matches names case-insensitively; a plain dict may not.
        lowered = {k.lower(): v for k, v in headers.items()}
        for name in self._headers:
            value = lowered.get(name)
            if value and name not in PER_REQUEST_HEADERS:
                return _key(KeyKind.HEADER, value)
        if self._pattern is not None:
            for name in sorted(lowered):
                if name not in PER_REQUEST_HEADERS and self._pattern.match(name) and lowered[name]:
                    return _key(KeyKind.HEADER, lowered[name])
        return None

    def from_body(self, body: Any) -> RoutingKey | None:
        if not isinstance(body, dict):
            return None
        for path in self._body_paths:
            node: Any = body
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                return _key(KeyKind.BODY, node)
            if isinstance(node, int) and not isinstance(node, bool):
                return _key(KeyKind.BODY, str(node))
        return None

    def from_prompt(self, body: Any) -> RoutingKey | None:
        anchor = self.anchor(body)
        if not anchor:
            return None
        digest = xxhash.xxh3_128_hexdigest(anchor.encode("utf-8", "surrogatepass"))
        return _key(KeyKind.PREFIX, "p-" + digest)

    def anchor(self, body: Any) -> str:
        """The part of a prompt that every turn of one conversation repeats unchanged."""
        if not isinstance(body, dict):
            return ""
        messages = body.get("messages")
        if isinstance(messages, list):
            return chat_anchor(messages)[: self.rules.anchor_max_chars]
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of prompts: anchor on the first
        if isinstance(prompt, str):
            return prompt[: min(self.rules.prefix_chars, self.rules.anchor_max_chars)]
        if isinstance(prompt, list):  # token ids
            return ",".join(str(t) for t in prompt[: self.rules.prefix_chars])
        return ""


def opens_conversation(body: Any) -> bool:
    """Whether a request is a conversation's first turn: chat messages (or Responses input items)
    with no earlier answer in them. A completions prompt cannot tell, so it never is."""
    if not isinstance(body, dict):
        return False
    turns = body.get("messages")
    if turns is None:
        if body.get("previous_response_id"):
            return False
        turns = body.get("input")
        if isinstance(turns, str):
            return True
    if not isinstance(turns, list):
        return False
    for item in turns:
        if isinstance(item, dict):
            role = item.get("role", item.get("type"))
            if isinstance(role, str) and role in ANSWER_ROLES:
                return False
    return True


def chat_anchor(messages: Iterable[Any]) -> str:
    """System/developer messages up to and including the first user message.

    Including the first user message keeps conversations that share only a long system prompt
    apart; stopping there keeps the anchor identical on every later turn.
    """
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            parts.append(f"{role}\x1f{content_text(message.get('content'))}")
        elif role == "user":
            parts.append(f"user\x1f{content_text(message.get('content'))}")
            break
    return "\x1e".join(parts)


def content_text(content: Any) -> str:
    """Text of a message's content, given as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                else:  # image/audio parts: a digest of their identity, not their bytes
                    url = part.get("image_url")
                    if isinstance(url, dict):
                        url = url.get("url")
                    if isinstance(url, str):
                        texts.append(xxhash.xxh3_64_hexdigest(url.encode("utf-8", "surrogatepass")))
        return "\x1d".join(texts)
    return ""
