from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.keys import (
    MAX_RAW_KEY_BYTES,
    KeyExtractor,
    KeyKind,
    KeyRules,
    chat_anchor,
    opens_conversation,
    redact,
)

extract = KeyExtractor().extract
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


@pytest.mark.parametrize("header", ["x-request-id", "X-Trace-Id", "x-correlation-id"])
def test_per_request_ids_are_never_session_keys(header: str) -> None:
    key = extract({header: "req-1"}, chat(0))
    assert key.kind is KeyKind.PREFIX
    assert extract({header: "req-1"}, {}).kind is KeyKind.NONE


def test_per_request_ids_are_ignored_even_if_configured_as_session_headers() -> None:
    rules = KeyRules(session_headers=("x-request-id",), session_header_pattern="")
    assert KeyExtractor(rules).extract({"x-request-id": "r"}, {}).kind is KeyKind.NONE


def test_header_order_decides_between_conventions() -> None:
    key = extract({"x-claude-code-session-id": "b", "x-session-id": "a"}, {})
    assert key.value == "a"


def test_configured_header_list_replaces_the_default() -> None:
    rules = KeyRules(session_headers=("x-tenant-chat",), session_header_pattern="")
    extractor = KeyExtractor(rules)
    assert extractor.extract({"x-tenant-chat": "t1"}, {}).value == "t1"
    assert extractor.extract({"x-session-id": "s"}, {}).kind is KeyKind.NONE


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


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=30,
    )
)
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
