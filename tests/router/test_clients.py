"""Today's clients, replayed: each client's request shape (headers and body, as read from its own
source; router/core/keys.py names the files) over several turns, with the ids that change every
request or turn changing. Every conversation must stay on one replica, and conversations that open
identically (an agent's fixed preamble) must still spread over the replicas.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RouterClient, Upstreams

REPLICAS = 4
CONVERSATIONS = 8
TURNS = 4
PREAMBLE = "You are a coding agent. Follow the repository's conventions. " * 40
OPENING = "Read the task in TASK.md and start."

Shape = Callable[[int, int], tuple[str, dict[str, str], dict[str, Any]]]


def chat_body(turn: int, system: str = PREAMBLE) -> dict[str, Any]:
    """A chat-completions agent turn: the fixed preamble, the opening, the history so far."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": OPENING},
    ]
    for n in range(turn):
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": f"c{n}", "type": "function"}],
            },
            {"role": "tool", "tool_call_id": f"c{n}", "content": f"output {n}"},
        ]
    return {"model": "fake-model", "stream": True, "messages": messages, "tools": []}


def codex(conversation: int, turn: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Codex CLI: Responses API, stateless (store false, the whole input every turn)."""
    thread = f"0199-thread-{conversation}"
    headers = {
        "originator": "codex_cli_rs",
        "User-Agent": "codex_cli_rs/0.50.0 (Linux; x86_64)",
        "session-id": "0199-session",  # one session, its threads are its subagents and forks
        "thread-id": thread,
        "x-client-request-id": str(uuid.uuid4()),
        "x-codex-window-id": f"{thread}:{turn // 2}",
        "x-codex-turn-state": uuid.uuid4().hex,
        "x-codex-turn-metadata": json.dumps({"turn_id": str(uuid.uuid4())}),
        "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    }
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": OPENING}]}
    ]
    for n in range(turn):
        items += [
            {"type": "reasoning", "summary": [], "encrypted_content": f"e{n}"},
            {"type": "function_call", "name": "shell", "call_id": f"c{n}", "arguments": "{}"},
            {"type": "function_call_output", "call_id": f"c{n}", "output": f"out {n}"},
        ]
    body = {
        "model": "fake-model",
        "instructions": PREAMBLE,
        "input": items,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": thread,
    }
    return "/v1/responses", headers, body


def claude_code(conversation: int, turn: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Claude Code: Anthropic Messages; conversation 0 is the main agent, the rest its subagents."""
    session = "5a1e0000-0000-4000-8000-000000000001"
    headers = {
        "X-Claude-Code-Session-Id": session,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "User-Agent": "claude-cli/2.1.140 (external, cli)",
        "x-client-request-id": str(uuid.uuid4()),
        "X-Stainless-Retry-Count": "0",
    }
    if conversation:
        headers["X-Claude-Code-Agent-Id"] = f"agent-{conversation}"
        headers["X-Claude-Code-Parent-Agent-Id"] = "main"
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": session})
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": OPENING}]}
    ]
    for n in range(turn):
        tool_use = {"type": "tool_use", "id": f"t{n}", "name": "Bash", "input": {}}
        messages += [
            {"role": "assistant", "content": [tool_use]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}"}]},
        ]
    body = {
        "model": "fake-model",
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": PREAMBLE, "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
        "tools": [],
        "metadata": {"user_id": user_id},
    }
    return "/v1/messages?beta=true", headers, body


def header_client(fixed: dict[str, str], per_request: tuple[str, ...], key_header: str) -> Shape:
    """A chat-completions client that names its conversation in `key_header`."""

    def shape(conversation: int, turn: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {**fixed, key_header: f"{key_header}-{conversation}"}
        headers.update({name: uuid.uuid4().hex for name in per_request})
        return "/v1/chat/completions", headers, chat_body(turn)

    return shape


KILO = header_client(
    {"X-KILOCODE-MACHINEID": "machine-1", "X-KILOCODE-EDITORNAME": "Visual Studio Code 1.100",
     "HTTP-Referer": "https://kilocode.ai", "X-Title": "Kilo Code"},
    ("x-kilo-request", "X-Request-Id"),
    "X-KiloCode-TaskId",
)  # fmt: skip
ROO = header_client({"X-Roo-App-Version": "3.30.0"}, ("X-Request-Id",), "X-Roo-Task-ID")
CLINE = header_client(
    {"HTTP-Referer": "https://cline.bot", "X-Title": "Cline", "X-Cline-Version": "3.30.0"},
    ("X-Request-Id",),
    "X-Task-ID",
)
OPEN_WEBUI = header_client(
    {"X-OpenWebUI-User-Id": "user-1", "X-OpenWebUI-User-Role": "user"},
    ("X-OpenWebUI-Message-Id",),
    "X-OpenWebUI-Chat-Id",
)  # fmt: skip
OPENCODE = header_client(
    {"x-opencode-project": "global", "x-opencode-client": "cli"},
    ("x-opencode-request",),
    "x-opencode-session",
)


def openrouter_style(conversation: int, turn: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    body = {**chat_body(turn), "session_id": f"or-{conversation}"}
    return "/v1/chat/completions", {"X-Request-Id": uuid.uuid4().hex}, body


def copilot_like(conversation: int, turn: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Only never-keys (per request, per interaction, per window): the prompt anchor decides, so
    each conversation opens differently."""
    request = uuid.uuid4().hex
    headers = {
        "X-Request-Id": request,
        "X-Agent-Task-Id": request,
        "X-Interaction-Id": uuid.uuid4().hex,
        "VScode-SessionId": "window-1",
        "VScode-MachineId": "machine-1",
        "Openai-Intent": "conversation-agent",
    }
    return "/v1/chat/completions", headers, chat_body(turn, f"{PREAMBLE} Workspace {conversation}.")


async def replay(client: Any, shape: Shape, kind: str = "header") -> dict[int, set[str]]:
    """Every conversation's turns, interleaved; returns the replicas each conversation used."""
    used: dict[int, set[str]] = {c: set() for c in range(CONVERSATIONS)}
    for turn in range(TURNS):
        for conversation in range(CONVERSATIONS):
            path, headers, body = shape(conversation, turn)
            response = await client.post(path, json=body, headers=headers)
            assert response.status == 200, await response.text()
            await response.read()
            used[conversation].add(response.headers["x-router-replica"])
            assert response.headers["x-router-route"].startswith(f"{kind}/")
    return used


@pytest.mark.parametrize(
    ("shape", "kind"),
    [(codex, "header"), (claude_code, "header"), (KILO, "header"), (ROO, "header"),
     (CLINE, "header"), (OPEN_WEBUI, "header"), (OPENCODE, "header"),
     (openrouter_style, "body"), (copilot_like, "prefix")],
    ids=["codex", "claude-code", "kilo", "roo", "cline", "open-webui", "opencode", "openrouter",
         "copilot-never-keys"],
)  # fmt: skip
async def test_each_clients_conversations_stay_on_one_replica_and_spread(
    upstreams: Upstreams, router: RouterClient, shape: Shape, kind: str
) -> None:
    ups = await upstreams(REPLICAS)
    client = await router([url for _, url in ups])
    used = await replay(client, shape, kind)
    assert all(len(replicas) == 1 for replicas in used.values()), used
    homes = {next(iter(replicas)) for replicas in used.values()}
    assert len(homes) > 1, "conversations that open alike piled onto one replica"
    # Upstream, each conversation is one X-Session-Id, whatever changed per request.
    sessions: dict[str, set[str]] = {}
    for fake, _ in ups:
        for seen in fake.seen.requests:
            sessions.setdefault(seen["headers"]["X-Session-Id"], set()).add(fake.name)
    assert len(sessions) == CONVERSATIONS
    assert all(len(names) == 1 for names in sessions.values())


async def test_claude_code_subagents_are_separate_conversations_of_one_session(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(REPLICAS)
    client = await router([url for _, url in ups])
    await replay(client, claude_code)
    session_ids = {
        seen["headers"]["X-Session-Id"] for fake, _ in ups for seen in fake.seen.requests
    }
    main = "5a1e0000-0000-4000-8000-000000000001"
    assert session_ids == {main} | {f"{main}/agent-{n}" for n in range(1, CONVERSATIONS)}


async def test_underscore_headers_of_older_codex_reach_the_key(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups])
    for header in ("session_id", "conversation_id"):
        response = await client.post(
            "/v1/chat/completions", json=chat_body(0), headers={header: f"legacy-{header}"}
        )
        await response.read()
        assert response.headers["x-router-route"].startswith("header/")
    sent = [seen["headers"]["X-Session-Id"] for fake, _ in ups for seen in fake.seen.requests]
    assert sorted(sent) == ["legacy-conversation_id", "legacy-session_id"]


async def test_without_client_conventions_a_task_id_is_not_a_key(
    upstreams: Upstreams, router: RouterClient
) -> None:
    ups = await upstreams(2)
    client = await router([url for _, url in ups], client_conventions=False)
    response = await client.post(
        "/v1/chat/completions", json=chat_body(0), headers={"X-Task-ID": "t1"}
    )
    await response.read()
    assert response.headers["x-router-route"] == "prefix/placed"
