"""Routing-key extraction: which conversation does a request belong to?

First match wins: a session header, then a body field (the operator's own, then the client
conventions table below), then a hash of the conversation's anchor (system prompt(s) + first
user message, or the opening of a prompt), else no key. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import xxhash

# --- What today's clients send (docs/design.md, "Keys"). One line per convention: who sends it, its
# scope, and where that was read. First match wins, in this order: a narrower scope (a thread, a
# task, one chat) before a broader one (a session, whose subagents are separate conversations),
# client-specific names before generic ones.


@dataclass(frozen=True, slots=True)
class Convention:
    """A header or body field a client sends to say which conversation a request belongs to."""

    client: str
    name: str  # a header name (lower case), or a dotted body path
    scope: str  # what one value covers: per thread, per task, per chat, per session, per user
    source: str  # where the convention was read: the client's source file, or its documentation
    refine: str = ""  # header whose value, when present, narrows the key (a session's subagent)


CLIENT_HEADERS: tuple[Convention, ...] = (
    Convention(
        "Codex CLI", "thread-id", "per thread (subagents and forks have their own)",
        "openai/codex codex-rs: the Responses request headers (session-id, thread-id)",
    ),
    Convention(
        "Claude Code", "x-claude-code-session-id", "per session, per subagent with its agent id",
        "closed source: observed by coder/aibridge#241 (the session id, since 2.1.86) and by "
        "proxies' captured traffic (x-claude-code-agent-id, subagents only, since 2.1.139)",
        refine="x-claude-code-agent-id",
    ),
    Convention(
        "Kilo Code", "x-kilocode-taskid", "per task",
        "Kilo-Org/kilocode src/shared/kilocode/headers.ts (X-KILOCODE-TASKID), "
        "src/api/providers/kilocode-openrouter.ts",
    ),
    Convention(
        "Roo Code", "x-roo-task-id", "per task",
        "RooCodeInc/Roo-Code src/api/providers/roo.ts (X-Roo-Task-ID)",
    ),
    Convention(
        "Cline", "x-task-id", "per task", "cline/cline src/api/providers/cline.ts (X-Task-ID)"
    ),
    Convention(
        "Open WebUI", "x-openwebui-chat-id", "per chat",
        "open-webui backend/open_webui/routers/openai.py get_headers_and_cookies, with "
        "ENABLE_FORWARD_USER_INFO_HEADERS=true",
    ),
    Convention(
        "opencode", "x-opencode-session", "per session",
        "opencode's gateway headers (OpenCode Go docs: a stable id per conversation), also "
        "sent by pi",
    ),
    Convention(
        "Codex CLI", "session-id", "per session (shared by its subagents and forks)",
        "openai/codex codex-rs: the Responses request headers (session-id, thread-id)",
    ),
    Convention(
        "Codex CLI (older)", "session_id", "per conversation",
        "openai/codex codex-rs/codex-api/src/requests/headers.rs (session_id)",
    ),
    Convention(
        "Codex CLI (older)", "conversation_id", "per conversation",
        "openai/codex codex-rs, before session_id replaced it (conversation_id)",
    ),
    Convention("generic", "x-session-id", "per conversation", "common proxy convention"),
    Convention(
        "generic", "x-session-affinity", "per conversation", "common gateway convention"
    ),
    Convention("generic", "x-chat-session-id", "per conversation", "common proxy convention"),
    Convention("generic", "x-conversation-id", "per conversation", "common proxy convention"),
)  # fmt: skip
CLIENT_BODY_FIELDS: tuple[Convention, ...] = (
    Convention(
        "OpenAI API (Codex CLI, Zed)", "prompt_cache_key", "per thread",
        "OpenAI's Responses and Chat Completions APIs; Codex sends its thread id, Zed its "
        "thread id where the model's prompt_cache_key capability is on",
    ),
    Convention("OpenRouter style", "session_id", "per conversation", "OpenRouter's request body"),
    Convention("generic", "metadata.session_id", "per conversation", "common body convention"),
    Convention(
        "Anthropic API (Claude Code)", "metadata.user_id",
        "per session: its session_id when the value is Claude Code's JSON or legacy "
        "..._session_<uuid> form, else the whole value",
        "Claude Code's metadata.user_id, as observed in coder/aibridge#241",
    ),
    # An end user, not a chat: far broader than the prompt anchor, so last of the ids.
    Convention("OpenAI API", "user", "per end user", "OpenAI's request body"),
)  # fmt: skip
# Never keys: a new value per request or per turn would scatter a conversation; one per user,
# machine or editor window would pile unrelated conversations onto one replica.
NEVER_KEYS: tuple[Convention, ...] = (
    Convention("any", "x-request-id", "per request", "common tracing convention"),
    Convention("any", "x-trace-id", "per request", "common tracing convention"),
    Convention("any", "x-correlation-id", "per request", "common tracing convention"),
    Convention("any", "x-amzn-trace-id", "per request", "AWS load balancers"),
    Convention("any", "x-b3-traceid", "per request", "Zipkin B3 propagation"),
    Convention("any", "traceparent", "per request", "W3C Trace Context"),
    Convention(
        "OpenAI SDKs, Codex CLI", "x-client-request-id", "per request",
        "openai/codex codex-rs request headers",
    ),
    Convention(
        "GitHub Copilot", "x-interaction-id", "per interaction",
        "microsoft/vscode-copilot-chat networking (request headers)",
    ),
    Convention(
        "GitHub Copilot", "x-agent-task-id", "per request (set to the request id)",
        "microsoft/vscode-copilot-chat networking (request headers)",
    ),
    Convention(
        "GitHub Copilot", "vscode-sessionid", "per editor window",
        "microsoft/vscode-copilot-chat networking (request headers)",
    ),
    Convention(
        "GitHub Copilot", "vscode-machineid", "per machine",
        "microsoft/vscode-copilot-chat networking (request headers)",
    ),
    Convention(
        "Open WebUI", "x-openwebui-message-id", "per message",
        "open-webui backend (forwarded user info headers)",
    ),
    Convention(
        "Open WebUI", "x-openwebui-user-id", "per user",
        "open-webui backend/open_webui/routers/openai.py get_headers_and_cookies",
    ),
    Convention(
        "opencode", "x-opencode-request", "per request", "opencode's gateway headers (with "
        "x-opencode-session)",
    ),
    Convention("Kilo Code", "x-kilo-request", "per request", "Kilo CLI gateway headers"),
    Convention(
        "Kilo Code", "x-kilocode-machineid", "per machine",
        "Kilo-Org/kilocode src/shared/kilocode/headers.ts",
    ),
    Convention(
        "Codex CLI", "x-codex-window-id", "per context window",
        "openai/codex codex-rs request headers",
    ),
    Convention(
        "Codex CLI", "x-codex-turn-state", "per turn", "openai/codex codex-rs request headers"
    ),
    Convention(
        "Codex CLI", "x-codex-turn-metadata", "per turn", "openai/codex codex-rs request headers"
    ),
)  # fmt: skip
NEVER_KEY_HEADERS: frozenset[str] = frozenset(c.name for c in NEVER_KEYS)
REFINES = -1  # the rank of a header that only narrows another one's key
# Covers x-copilot-session-id, x-zoo-session-id, x-litellm-session-id, ...: after the table.
DEFAULT_SESSION_HEADER_PATTERN = r"^x-[a-z0-9-]+-session-id$"
# What a key is taken from (`--key-source`): session ids first, else the prompt anchor; or the
# prompt anchor alone.
KEY_SOURCES = ("session", "prompt")
# Message roles (and Responses item types) that only a conversation's later turns carry.
ANSWER_ROLES = frozenset(
    {
        "assistant", "tool", "function", "function_call", "function_call_output", "reasoning",
        "custom_tool_call", "custom_tool_call_output",
    }
)  # fmt: skip
# Content blocks that answer an earlier turn: an Anthropic tool result in a user message.
ANSWER_BLOCKS = frozenset({"tool_result", "function_call_output"})
# Body fields other than chat `messages` that carry a prompt, in the order they are looked for:
# completions, Responses/embeddings/pooling/classify, /inference/v1/generate, rerank, score.
PROMPT_FIELDS = ("prompt", "input", "token_ids", "query", "text_1")
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


def session_in_user_id(value: str) -> str:
    """Claude Code's `metadata.user_id`: the session id it carries, else the value itself.

    Newer versions send a JSON string (`{"device_id": ..., "account_uuid": ..., "session_id":
    ...}`), older ones `user_<hash>_account_<uuid>_session_<uuid>`; keying on the session id
    gives the same key as its X-Claude-Code-Session-Id header.
    """
    if value.startswith("{"):
        try:
            session = json.loads(value).get("session_id")
        except (ValueError, AttributeError, RecursionError):
            return value
        return session if isinstance(session, str) and session else value
    _, found, session = value.rpartition("_session_")
    return session if found and session else value


# Body fields whose value needs reading before it is a key.
BODY_READERS: dict[str, Callable[[str], str]] = {"metadata.user_id": session_in_user_id}


@dataclass(frozen=True, slots=True)
class KeyRules:
    """What to look at, in order: the operator's own session headers, the client table's
    (`client_conventions`), headers matching the pattern; the operator's body fields, the
    table's; the prompt anchor. `use_session_ids=False` (`--key-source prompt`) keys on the
    prompt anchor alone, whatever ids the client sends."""

    session_headers: tuple[str, ...] = ()
    session_header_pattern: str = DEFAULT_SESSION_HEADER_PATTERN
    body_fields: tuple[str, ...] = ()
    client_conventions: bool = True
    prefix_chars: int = DEFAULT_PREFIX_CHARS
    anchor_max_chars: int = DEFAULT_ANCHOR_MAX_CHARS
    use_session_ids: bool = True


class KeyExtractor:
    """Turns (headers, parsed JSON body) into a RoutingKey (docs/design.md, "Keys")."""

    def __init__(self, rules: KeyRules | None = None) -> None:
        self.rules = rules = rules or KeyRules()
        table = rules.client_conventions
        # (name, refining header): the operator's first, then the table's; never a never-key.
        names: dict[str, str] = {}  # name -> refining header, in priority order, first wins
        for name in rules.session_headers:
            names.setdefault(name.lower(), "")
        for convention in CLIENT_HEADERS if table else ():
            names.setdefault(convention.name, convention.refine)
        keys = [(n, r) for n, r in names.items() if n not in NEVER_KEY_HEADERS]
        self._refines = tuple(refine for _, refine in keys)
        # One dict look-up per request header: its priority as a key, or REFINES.
        self._rank = {refine: REFINES for _, refine in keys if refine}
        self._rank.update((name, priority) for priority, (name, _) in enumerate(keys))
        pattern = rules.session_header_pattern
        self._pattern = re.compile(pattern, re.IGNORECASE) if pattern else None
        fields = [*rules.body_fields, *(c.name for c in CLIENT_BODY_FIELDS if table)]
        self._body_paths = tuple(
            (tuple(name.split(".")), BODY_READERS.get(name)) for name in dict.fromkeys(fields)
        )

    def extract(self, headers: Mapping[str, str], body: Any) -> RoutingKey:
        if self.rules.use_session_ids:
            key = self.from_headers(headers) or self.from_body(body)
            if key is not None:
                return key
        return self.from_prompt(body) or NO_KEY

    def from_headers(self, headers: Mapping[str, str]) -> RoutingKey | None:
        # Names are matched lower-cased: aiohttp's CIMultiDict is case-insensitive, a dict is not.
        best, value = len(self._refines), ""
        refining: dict[str, str] = {}
        others: list[tuple[str, str]] = []  # for the pattern, when no named header is a key
        for name, text in headers.items():
            lowered = name.lower()
            rank = self._rank.get(lowered)
            if rank is None:
                others.append((lowered, text))
            elif rank == REFINES:
                refining[lowered] = text
            elif text and rank < best:
                best, value = rank, text
        if value:
            narrower = refining.get(self._refines[best]) if refining else None
            return _key(KeyKind.HEADER, f"{value}/{narrower}" if narrower else value)
        if self._pattern is not None:
            for name, text in sorted(others):
                if text and name not in NEVER_KEY_HEADERS and self._pattern.match(name):
                    return _key(KeyKind.HEADER, text)
        return None

    def from_body(self, body: Any) -> RoutingKey | None:
        if not isinstance(body, dict):
            return None
        for path, reader in self._body_paths:
            node: Any = body
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                return _key(KeyKind.BODY, reader(node) if reader else node)
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
        limit = self.rules.anchor_max_chars
        messages = body.get("messages")
        if isinstance(messages, list):
            system = body.get("system")  # Anthropic Messages: the system prompt is top level
            if system is None:
                return chat_anchor(messages)[:limit]
            return f"system\x1f{content_text(system)}\x1e{chat_anchor(messages)}"[:limit]
        for name in PROMPT_FIELDS:
            prompt = body.get(name)
            if prompt is None:
                continue
            if name == "input":
                if body.get("previous_response_id"):
                    return ""  # it carries only its new input; its history is stored upstream
                if is_items(prompt) or "instructions" in body:
                    return responses_anchor(body, prompt)[:limit]
            return self.prompt_anchor(prompt)
        return ""

    def prompt_anchor(self, prompt: Any) -> str:
        """The opening of a prompt given as text or token ids (the first of a batch)."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt[: min(self.rules.prefix_chars, self.rules.anchor_max_chars)]
        if isinstance(prompt, list):  # token ids
            return ",".join(str(t) for t in prompt[: self.rules.prefix_chars])
        return ""


def is_items(value: Any) -> bool:
    """A Responses `input` given as items (messages, tool outputs), not as plain text."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def responses_anchor(body: dict[str, Any], items: Any) -> str:
    """A Responses request's instructions and its input up to the first user message."""
    instructions = body.get("instructions")
    opening = chat_anchor(items) if isinstance(items, list) else f"user\x1f{content_text(items)}"
    if isinstance(instructions, str) and instructions:
        return f"system\x1f{instructions}\x1e{opening}"
    return opening


def opens_conversation(body: Any) -> bool:
    """Whether a request is a conversation's first turn: chat or Messages messages (or Responses
    input items) with no earlier answer in them: no assistant message, no tool output or result
    block. A completions prompt cannot tell, so it never is."""
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
            content = item.get("content") if role == "user" else None
            if isinstance(content, list):
                for block in content:
                    kind = block.get("type") if isinstance(block, dict) else None
                    if isinstance(kind, str) and kind in ANSWER_BLOCKS:
                        return False
    return True


def conversation_length(body: Any) -> int:
    """How many messages (or Responses input items) a request carries; 0 when it carries no
    list of them. A router that sees a conversation grow by more than one turn's worth since it
    last routed it knows another router instance served the turns between."""
    if type(body) is not dict:
        return 0
    turns = body.get("messages")
    if turns is None:
        turns = body.get("input")
    return len(turns) if type(turns) is list else 0


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
