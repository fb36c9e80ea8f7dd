"""vLLM's KV-cache event batches, decoded into plain values (docs/design.md, Engine truth).

Pure: bytes in, values out. A publisher sends multipart messages `[topic, sequence, payload]`:
the sequence is 8 bytes big-endian (-1 marks the end of a replay), the payload a msgpack
`[ts, [events...], data_parallel_rank]` (some releases encode the batch as a map with the same
field names). Events come in the two shapes vLLM has shipped: maps with a `type` field (0.11 on),
and positional arrays whose first element is the event's name (earlier releases, whose structs
were `array_like`). Unknown event types and malformed events are skipped and counted; a message
that cannot be read at all raises `MalformedMessage`, which the caller counts. Nothing here
raises anything else on bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

# vLLM's own block hash: a 64-bit int by default, or sha256 bytes
# (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0). Seeded per engine process: never compared across
# engines, only used to apply removals and to find a stored block's parent.
EngineHash = int | bytes

MEDIUM_GPU = "GPU"
END_OF_REPLAY = -1

# Field order of the positional (array) shape, after the tag: the structs' declaration order.
# Trailing fields with defaults may be absent (msgspec's omit_defaults).
STORED_FIELDS = (
    "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
    "lora_name", "extra_keys", "group_idx",
)  # fmt: skip
REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")
BATCH_FIELDS = ("ts", "events", "data_parallel_rank")


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Full blocks that became cached, in prefix order, each `block_size` tokens of `token_ids`."""

    block_hashes: tuple[EngineHash, ...]
    parent_block_hash: EngineHash | None
    token_ids: Sequence[int]
    block_size: int
    medium: str = MEDIUM_GPU
    group: int = 0
    # Anything besides the tokens that vLLM mixed into a block's hash (LoRA, multimodal items,
    # cache salt), one entry per block: such blocks never match a plain prompt.
    extra_keys: tuple[Any, ...] | None = None
    lora: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[EngineHash, ...]
    medium: str = MEDIUM_GPU
    group: int = 0


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One published message: its sequence number, the engine's wall-clock time, its events."""

    sequence: int
    ts: float
    events: tuple[Event, ...]
    rank: int | None = None  # data-parallel rank, as the publisher stamped it
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> events left out


class MalformedMessage(ValueError):
    """A message whose frames or payload cannot be read at all."""


_decoder = msgspec.msgpack.Decoder()


def parse_sequence(frame: bytes) -> int:
    if len(frame) != 8:
        raise MalformedMessage(f"sequence frame of {len(frame)} bytes, expected 8")
    return int.from_bytes(frame, "big", signed=True)


def decode_message(frames: Sequence[bytes]) -> EventBatch | None:
    """A live message `[topic, seq, payload]`, or a replay answer without its delimiter (`[topic,
    seq, payload]` from vLLM 0.11 on, `[seq, payload]` before). None: the end-of-replay marker."""
    if len(frames) == 3:
        sequence, payload = parse_sequence(frames[1]), frames[2]
    elif len(frames) == 2:
        sequence, payload = parse_sequence(frames[0]), frames[1]
    else:
        raise MalformedMessage(f"{len(frames)} frames, expected 2 or 3")
    if sequence == END_OF_REPLAY:
        return None
    return decode_payload(sequence, payload)


def decode_payload(sequence: int, payload: bytes) -> EventBatch:
    try:
        raw = _decoder.decode(payload)
    except (msgspec.DecodeError, ValueError) as error:
        raise MalformedMessage(f"payload is not msgpack: {error}") from None
    batch = _fields(raw, BATCH_FIELDS)
    if batch is None:
        raise MalformedMessage("payload is not a batch")
    ts, events, rank = batch.get("ts"), batch.get("events"), batch.get("data_parallel_rank")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not isinstance(events, list):
        raise MalformedMessage("batch without a timestamp or an event list")
    decoded: list[Event] = []
    skipped: dict[str, int] = {}
    for item in events:
        event, reason = _event(item)
        if event is None:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            decoded.append(event)
    return EventBatch(
        sequence,
        float(ts),
        tuple(decoded),
        rank if _is_int(rank) else None,
        skipped,
    )


def _event(item: Any) -> tuple[Event | None, str]:
    """The event, or None and why it was skipped."""
    if isinstance(item, dict):
        tag = item.get("type")
        shape: dict[str, Any] | None = item
    elif isinstance(item, list) and item and isinstance(item[0], str):
        tag = item[0]
        shape = None
    else:
        return None, "malformed"
    if tag == "BlockStored":
        values = shape if shape is not None else _positional(item, STORED_FIELDS)
        return _stored(values)
    if tag == "BlockRemoved":
        values = shape if shape is not None else _positional(item, REMOVED_FIELDS)
        return _removed(values)
    if tag == "AllBlocksCleared":
        return AllBlocksCleared(), ""
    return None, "unknown_type"


def _stored(values: dict[str, Any]) -> tuple[Event | None, str]:
    hashes = _hashes(values.get("block_hashes"))
    parent = values.get("parent_block_hash")
    tokens = values.get("token_ids")
    size = values.get("block_size")
    if (
        hashes is None
        or not (parent is None or _is_hash(parent))
        or not isinstance(tokens, list)
        or not isinstance(size, int)
        or isinstance(size, bool)
        or size <= 0
        or len(tokens) != len(hashes) * size
        or not all(_is_int(t) and t >= 0 for t in tokens)
    ):
        return None, "malformed"
    extra = values.get("extra_keys")
    lora = values.get("lora_name", values.get("lora_id"))
    return BlockStored(
        hashes,
        parent,
        tokens,
        size,
        _medium(values.get("medium")),
        _group(values.get("group_idx")),
        tuple(extra) if isinstance(extra, list) and any(e is not None for e in extra) else None,
        None if lora is None else str(lora),
    ), ""


def _removed(values: dict[str, Any]) -> tuple[Event | None, str]:
    hashes = _hashes(values.get("block_hashes"))
    if hashes is None:
        return None, "malformed"
    return BlockRemoved(hashes, _medium(values.get("medium")), _group(values.get("group_idx"))), ""


def _fields(raw: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):
        return dict(zip(names, raw, strict=False))
    return None


def _positional(item: list[Any], names: tuple[str, ...]) -> dict[str, Any]:
    return dict(zip(names, item[1:], strict=False))


def _hashes(raw: Any) -> tuple[EngineHash, ...] | None:
    if not isinstance(raw, list) or not all(_is_hash(h) for h in raw):
        return None
    return tuple(raw)


def _medium(raw: Any) -> str:
    return raw if isinstance(raw, str) and raw else MEDIUM_GPU


def _group(raw: Any) -> int:
    return raw if _is_int(raw) else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hash(value: Any) -> bool:
    return _is_int(value) or isinstance(value, bytes)
