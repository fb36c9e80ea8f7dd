from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.keys import (
    CLIENT_BODY_FIELDS,
    CLIENT_HEADERS,
    MAX_RAW_KEY_BYTES,
    NEVER_KEY_HEADERS,
    NEVER_KEYS,
    KeyExtractor,
    KeyKind,
    KeyRules,
    chat_anchor,
    conversation_length,
    opens_conversation,
    redact,
)

extract = KeyExtractor().extract
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    max_leaves=30,
)
SYSTEM = "You are a careful coding assistant. " * 300  # ~2,000+ tokens shared by everyone


def chat(history_turns: int, first_user: str = "Explain this repository.") -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": first_user},
    ]
    for turn in range(history_turns):
        messages.append({"role": "assistant", "content": f"answer {turn}"})
        messages.append({"role": "user", "content": f"follow-up {turn}"})
    return {"model": "m", "messages": messages}


def test_every_turn_of_a_growing_chat_yields_the_same_key() -> None:
    keys = {extract({}, chat(turns)) for turns in range(20)}
    assert len(keys) == 1
    (key,) = keys
    assert key.kind is KeyKind.PREFIX


def test_chats_sharing_a_long_system_prompt_but_not_a_first_message_get_different_keys() -> None:
    a = extract({}, chat(3, "Summarise chapter one."))
    b = extract({}, chat(3, "Translate this into French."))
    assert a.value != b.value
    assert a.point != b.point


@pytest.mark.parametrize(
    "header",
    [
        "X-Session-Id",
        "x-session-affinity",
        "X-Chat-Session-Id",
        "x-conversation-id",
        "session-id",
        "x-claude-code-session-id",
        "x-copilot-session-id",
        "X-Zoo-Session-ID",
        "x-litellm-session-id",
        "x-dynamo-session-id",
    ],
)
def test_each_session_header_convention_is_recognised(header: str) -> None:
    key = extract({header: "conv-42", "Content-Type": "application/json"}, chat(0))
    assert key.kind is KeyKind.HEADER
    assert key.value == "conv-42"


@pytest.mark.parametrize("header", sorted(NEVER_KEY_HEADERS))
def test_per_request_and_over_broad_ids_are_never_session_keys(header: str) -> None:
    key = extract({header: "req-1"}, chat(0))
    assert key.kind is KeyKind.PREFIX
    assert extract({header: "req-1"}, {}).kind is KeyKind.NONE


def test_per_request_ids_are_ignored_even_if_configured_as_session_headers() -> None:
    rules = KeyRules(
        session_headers=("x-request-id", "X-Interaction-Id"), session_header_pattern=""
    )
    extractor = KeyExtractor(rules)
    assert extractor.extract({"x-request-id": "r", "x-interaction-id": "i"}, {}).kind is (
        KeyKind.NONE
    )


def test_client_specific_conventions_win_over_generic_ones() -> None:
    key = extract({"x-claude-code-session-id": "b", "x-session-id": "a"}, {})
    assert key.value == "b"


def test_the_operators_own_headers_come_before_the_client_table() -> None:
    rules = KeyRules(session_headers=("X-Tenant-Chat",), session_header_pattern="")
    extractor = KeyExtractor(rules)
    assert extractor.extract({"x-tenant-chat": "t1", "thread-id": "th"}, {}).value == "t1"
    assert extractor.extract({"x-session-id": "s"}, {}).value == "s"  # the table still counts


def test_without_client_conventions_only_the_operators_lists_and_pattern_count() -> None:
    rules = KeyRules(
        session_headers=("x-tenant-chat",), body_fields=("meta.chat",), client_conventions=False
    )
    extractor = KeyExtractor(rules)
    assert extractor.extract({"x-tenant-chat": "t1"}, {}).value == "t1"
    assert extractor.extract({"x-foo-session-id": "p"}, {}).value == "p"  # the pattern
    assert extractor.extract({}, {"meta": {"chat": "c"}}).value == "c"
    assert extractor.extract({"thread-id": "t", "x-session-id": "s"}, {}).kind is KeyKind.NONE
    assert extractor.extract({}, {"prompt_cache_key": "k"}).kind is KeyKind.NONE


def test_the_operators_body_fields_come_before_the_tables() -> None:
    extractor = KeyExtractor(KeyRules(body_fields=("tenant.chat",)))
    body = {"tenant": {"chat": "mine"}, "prompt_cache_key": "pck"}
    assert extractor.extract({}, body).value == "mine"
    assert extractor.extract({}, {"prompt_cache_key": "pck"}).value == "pck"


# --- today's clients (router/core/keys.py, CLIENT_HEADERS): what each sends, what it keys on


def test_codex_keys_on_its_thread_before_its_session() -> None:
    headers = {"session-id": "sess", "thread-id": "thread-2", "x-client-request-id": "r1"}
    assert extract(headers, {"prompt_cache_key": "thread-2"}).value == "thread-2"
    assert extract({"session-id": "sess"}, {}).value == "sess"  # versions without thread-id


@pytest.mark.parametrize("header", ["session_id", "conversation_id", "Session_Id"])
def test_older_codex_underscore_headers_are_keys(header: str) -> None:
    assert extract({header: "conv-9"}, {}).value == "conv-9"


def test_claude_code_subagents_are_their_own_conversations_within_the_session() -> None:
    main = extract({"X-Claude-Code-Session-Id": "s1"}, {})
    agent_a = extract({"X-Claude-Code-Session-Id": "s1", "X-Claude-Code-Agent-Id": "a"}, {})
    agent_b = extract({"X-Claude-Code-Session-Id": "s1", "X-Claude-Code-Agent-Id": "b"}, {})
    assert main.value == "s1"
    assert len({main.point, agent_a.point, agent_b.point}) == 3
    assert agent_a == extract({"x-claude-code-session-id": "s1", "x-claude-code-agent-id": "a"}, {})
    # An agent id alone (no session) is no key: it says nothing about which session.
    assert extract({"X-Claude-Code-Agent-Id": "a"}, {}).kind is KeyKind.NONE


@pytest.mark.parametrize(
    "header",
    ["X-KILOCODE-TASKID", "X-KiloCode-TaskId", "x-kilocode-taskid", "X-Roo-Task-ID", "X-Task-ID",
     "X-OpenWebUI-Chat-Id", "x-opencode-session"],
)  # fmt: skip
def test_task_and_chat_headers_of_agents_and_front_ends_are_keys(header: str) -> None:
    key = extract({header: "task-7", "X-Request-Id": "r", "traceparent": "00-ab-cd-01"}, chat(3))
    assert (key.kind, key.value) == (KeyKind.HEADER, "task-7")


def test_openrouter_style_body_session_id_is_a_key() -> None:
    assert extract({}, {**chat(1), "session_id": "or-1"}).value == "or-1"


@pytest.mark.parametrize(
    "user_id",
    [
        json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "5a1e-42"}),
        "user_" + "f" * 64 + "_account__session_5a1e-42",
    ],
)
def test_claude_code_metadata_user_id_is_keyed_on_its_session(user_id: str) -> None:
    key = extract({}, {"messages": [], "metadata": {"user_id": user_id}})
    assert (key.kind, key.value) == (KeyKind.BODY, "5a1e-42")
    assert key.point == extract({"X-Claude-Code-Session-Id": "5a1e-42"}, {}).point


@pytest.mark.parametrize(
    "user_id", ["plain-user", "{not json", '{"session_id": 7}', '["x"]', "trailing_session_"]
)
def test_other_metadata_user_ids_are_keyed_whole(user_id: str) -> None:
    assert extract({}, {"metadata": {"user_id": user_id}}).value == user_id


def test_the_convention_tables_are_complete_and_disjoint() -> None:
    for convention in (*CLIENT_HEADERS, *CLIENT_BODY_FIELDS, *NEVER_KEYS):
        assert convention.client and convention.scope and convention.source
    headers = [c.name for c in CLIENT_HEADERS]
    assert all(name == name.lower() for name in headers)
    assert len(set(headers)) == len(headers)
    assert not set(headers) & NEVER_KEY_HEADERS
    assert headers.index("thread-id") < headers.index("session-id")


@pytest.mark.parametrize(
    ("body", "value"),
    [
        ({"prompt_cache_key": "pck", "user": "u"}, "pck"),
        ({"session_id": "sid"}, "sid"),
        ({"metadata": {"session_id": "msid", "user_id": "muid"}}, "msid"),
        ({"metadata": {"user_id": "muid"}, "user": "u"}, "muid"),
        ({"user": "u"}, "u"),
    ],
)
def test_body_fields_in_order(body: dict[str, Any], value: str) -> None:
    key = extract({}, {**chat(1), **body})
    assert key.kind is KeyKind.BODY
    assert key.value == value


def test_headers_win_over_body_fields() -> None:
    key = extract({"x-session-id": "h"}, {**chat(1), "prompt_cache_key": "b"})
    assert (key.kind, key.value) == (KeyKind.HEADER, "h")


def test_prefix_policy_rules_ignore_session_ids() -> None:
    extractor = KeyExtractor(KeyRules(use_session_ids=False))
    key = extractor.extract({"x-session-id": "h"}, {**chat(1), "user": "u"})
    assert key.kind is KeyKind.PREFIX


def test_content_given_as_parts_anchors_like_the_same_text() -> None:
    parts = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    }
    plain = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}
    assert extract({}, parts) == extract({}, plain)


def test_images_distinguish_conversations_without_hashing_their_bytes_into_the_anchor() -> None:
    def with_image(url: str) -> dict[str, Any]:
        part = {"type": "image_url", "image_url": {"url": url}}
        return {"messages": [{"role": "user", "content": [part]}]}

    a = with_image("data:image/png;base64," + "A" * 100_000)
    b = with_image("data:image/png;base64," + "A" * 99_999 + "B")
    assert extract({}, a) != extract({}, b)
    assert len(chat_anchor(a["messages"])) < 100


def test_completions_anchor_on_the_first_k_characters() -> None:
    extractor = KeyExtractor(KeyRules(prefix_chars=100))
    base = "x" * 100
    assert extractor.extract({}, {"prompt": base + "turn one"}) == extractor.extract(
        {}, {"prompt": base + "turn two, longer"}
    )
    assert extractor.extract({}, {"prompt": "y" + base}).kind is KeyKind.PREFIX
    assert extractor.extract({}, {"prompt": [1, 2, 3]}).kind is KeyKind.PREFIX


@pytest.mark.parametrize("body", [None, {}, [], "text", {"messages": "nope"}, {"prompt": 7}])
def test_nothing_to_hash_gives_no_key(body: Any) -> None:
    assert extract({}, body).kind is KeyKind.NONE


def test_long_values_are_hashed_and_short_ones_kept() -> None:
    long_value = "s" * (MAX_RAW_KEY_BYTES + 1)
    key = extract({"x-session-id": long_value}, {})
    assert key.value != long_value
    assert len(key.value.encode()) <= MAX_RAW_KEY_BYTES
    assert extract({"x-session-id": long_value}, {}) == key


@pytest.mark.parametrize("value", ["\x1f", "a\r\nX-Injected: 1", "tab\there", "del\x7f"])
def test_values_with_control_characters_are_hashed_into_a_header_safe_key(value: str) -> None:
    key = extract({}, {"metadata": {"session_id": value}})
    assert key.kind is KeyKind.BODY
    assert key.value.startswith("h-") and key.value.isprintable()
    assert extract({}, {"metadata": {"session_id": value}}) == key


def test_redact_never_returns_the_value() -> None:
    assert "secret-session" not in redact("secret-session")


@given(
    system=st.text(max_size=300),
    first=st.text(max_size=300),
    later=st.lists(st.tuples(st.text(max_size=50), st.text(max_size=50)), max_size=8),
)
def test_key_is_stable_as_history_grows(
    system: str, first: str, later: list[tuple[str, str]]
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
    ]
    key = extract({}, {"messages": messages})
    for answer, question in later:
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": question},
        ]
        assert extract({}, {"messages": messages}) == key


@given(first_a=st.text(min_size=1, max_size=80), first_b=st.text(min_size=1, max_size=80))
def test_different_first_messages_give_different_keys(first_a: str, first_b: str) -> None:
    if first_a == first_b:
        return
    a = extract(
        {},
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first_a}]},
    )
    b = extract(
        {},
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first_b}]},
    )
    assert a != b


@given(any_json)
def test_any_json_body_gives_a_key_without_raising(body: Any) -> None:
    extract({}, body)
    extract({}, {"messages": body})
    extract({}, {"messages": [{"role": "user", "content": body}], "metadata": body})


def test_a_request_without_earlier_answers_opens_a_conversation() -> None:
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Hi"}
    answer = {"role": "assistant", "content": "Hello"}
    assert opens_conversation({"messages": [system, user]})
    assert not opens_conversation({"messages": [system, user, answer, user]})
    assert not opens_conversation({"messages": [user, {"role": "tool", "content": "42"}]})
    assert opens_conversation({"input": "Hi"})
    assert not opens_conversation({"input": "Hi", "previous_response_id": "resp_1"})
    assert not opens_conversation({"input": [user, {"type": "function_call_output"}]})
    assert not opens_conversation({"prompt": "Once upon a time"})  # completions cannot tell
    assert opens_conversation({"messages": [{"role": ["odd"]}, {"role": {"x": 1}}]})
    assert not opens_conversation([1, 2])


def test_conversation_length_counts_messages_or_input_items() -> None:
    user = {"role": "user", "content": "Hi"}
    assert conversation_length({"messages": [user, user, user]}) == 3
    assert conversation_length({"input": [user, user]}) == 2
    assert conversation_length({"input": "Hi"}) == 0
    assert conversation_length({"prompt": "Once"}) == 0
    assert conversation_length([user]) == 0


# --- the prompt anchor of other request shapes


def messages_body(system: Any, turns: int = 0) -> dict[str, Any]:
    """An Anthropic Messages body: the system prompt is top level, not a message."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Review this diff."}]
    for turn in range(turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": f"a{turn}"}]})
        messages.append({"role": "user", "content": f"and {turn}?"})
    body: dict[str, Any] = {"model": "m", "max_tokens": 8, "messages": messages}
    if system is not None:
        body["system"] = system
    return body


def test_the_messages_anchor_includes_the_top_level_system_prompt() -> None:
    as_text = extract({}, messages_body("You are Claude Code."))
    as_blocks = extract(
        {}, messages_body([{"type": "text", "text": "You are Claude Code.", "cache_control": {}}])
    )
    assert as_text.kind is KeyKind.PREFIX
    assert as_text == as_blocks
    assert as_text != extract({}, messages_body("You are someone else."))
    assert as_text != extract({}, messages_body(None))
    assert {extract({}, messages_body("You are Claude Code.", n)) for n in range(5)} == {as_text}


def test_a_responses_conversation_anchors_on_instructions_and_first_input() -> None:
    def body(instructions: str, later: int = 0) -> dict[str, Any]:
        items: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "input_text", "text": "Fix the bug."}]}
        ]
        for n in range(later):
            items += [{"type": "function_call", "name": "sh"}, {"type": "function_call_output"}]
            items += [{"type": "message", "role": "assistant", "content": f"done {n}"}]
        return {"model": "m", "instructions": instructions, "input": items}

    key = extract({}, body("You are Codex."))
    assert key.kind is KeyKind.PREFIX
    assert {extract({}, body("You are Codex.", n)) for n in range(4)} == {key}
    assert key != extract({}, body("You are someone else."))
    assert extract({}, {"input": "Hi", "instructions": "x"}).kind is KeyKind.PREFIX
    # A request continuing a stored response carries only its new input: no anchor.
    continued = {"input": "And then?", "previous_response_id": "resp_1", "instructions": "x"}
    assert extract({}, continued).kind is KeyKind.NONE


@pytest.mark.parametrize(
    "body",
    [
        {"input": "embed this text"},
        {"input": ["first text", "second"]},
        {"token_ids": [1, 2, 3, 4]},
        {"query": "what is it?", "documents": ["a", "b"]},
        {"text_1": "left", "text_2": ["right"]},
    ],
)
def test_pooling_generate_rerank_and_score_prompts_anchor_a_key(body: dict[str, Any]) -> None:
    key = extract({}, body)
    assert key.kind is KeyKind.PREFIX
    assert extract({"x-session-id": "s"}, body).value == "s"


def test_anthropic_tool_results_and_reasoning_items_mean_a_later_turn() -> None:
    tool_result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    later = {"messages": [{"role": "user", "content": [tool_result]}]}
    assert not opens_conversation(later)
    first = {"system": "s", "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    assert opens_conversation(first)
    assert not opens_conversation({"input": [{"type": "reasoning", "summary": []}]})


@given(any_json)
def test_any_messages_or_input_shape_tells_first_turns_without_raising(value: Any) -> None:
    opens_conversation({"messages": [{"role": "user", "content": [{"type": value}]}]})
    opens_conversation({"messages": value, "system": value})
    opens_conversation({"input": value})
    extract({}, {"messages": [], "system": value})
    extract({}, {"input": value, "instructions": value})
    extract({}, {"metadata": {"user_id": json.dumps(value)}})
