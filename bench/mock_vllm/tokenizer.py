"""Deterministic word-level tokenizer, ChatML-like chat template and deterministic answers.

A token is a run of word characters or one other non-space character, with the whitespace that
follows it attached (``"Hello "``, ``"world"``, ``", "``). Token boundaries depend only on the
text up to the boundary, so a prefix of a text tokenizes to a prefix of its tokens (all but the
last, possibly partial, token). Ids come from a stable hash of the token text.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import xxhash

VOCAB_SIZE = 128256  # Llama 3's vocabulary size, so ids look plausible
_TOKEN = re.compile(r"\w+\s*|[^\w\s]\s*|\s+")

# Answers are drawn from this list; each entry is a single token in any context.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
    "be",
    "by",
    "this",
    "are",
    "or",
    "at",
    "from",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "model",
    "cache",
    "token",
    "prefix",
    "block",
    "replica",
    "session",
    "router",
    "request",
    "stream",
    "latency",
    "batch",
    "engine",
    "decode",
    "prefill",
    "memory",
    "queue",
    "answer",
    "context",
    "turn",
    "reply",
    "policy",
    "hash",
    "ring",
    "load",
]
_PUNCT = (",", ".")


@lru_cache(maxsize=1 << 16)
def token_id(piece: str) -> int:
    """Stable id of one token's text."""
    return xxhash.xxh3_64_intdigest(piece.encode()) % VOCAB_SIZE


def split_tokens(text: str) -> list[str]:
    """The token texts of `text`, in order; they concatenate back to `text`."""
    return _TOKEN.findall(text)


def encode(text: str) -> list[int]:
    """Token ids of `text`."""
    return [token_id(piece) for piece in _TOKEN.findall(text)]


def message_text(content: object) -> str:
    """The text of a message's content: a string or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def render_chat(messages: list[dict[str, object]]) -> str:
    """Render messages in order, ChatML style, ending with the assistant's generation prompt.

    Turn n+1's prompt therefore starts with turn n's prompt followed by turn n's answer.
    """
    parts = [
        f"<|im_start|>{m.get('role', 'user')}\n{message_text(m.get('content'))}<|im_end|>\n"
        for m in messages
    ]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def answer_length(prompt_ids: list[int], seed: int, low: int = 16, high: int = 512) -> int:
    """The length, in tokens, at which the answer to this prompt stops by itself."""
    digest = xxhash.xxh3_64_intdigest(_ids_bytes(prompt_ids[-64:]), seed=seed)
    return low + digest % (high - low + 1)


def answer_tokens(prompt_ids: list[int], seed: int, count: int) -> list[str]:
    """`count` token texts of the deterministic answer to a prompt.

    Words with a trailing space, a comma or full stop now and then, and a full stop at the end,
    so that the answer, re-sent in the next turn's history, tokenizes to these same tokens.
    """
    state = xxhash.xxh3_64_intdigest(_ids_bytes(prompt_ids[-64:]), seed=seed + 1)
    kinds: list[str] = []
    for i in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        last = i == count - 1
        after_word = bool(kinds) and kinds[-1] not in _PUNCT
        if (last and after_word) or (after_word and (state >> 33) % 9 == 0):
            kinds.append(_PUNCT[(state >> 40) % 2] if not last else ".")
        else:
            kinds.append(_WORDS[(state >> 33) % len(_WORDS)])
    pieces: list[str] = []
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < count else None
        if kind in _PUNCT:
            pieces.append(kind if nxt is None else kind + " ")
        else:
            pieces.append(kind + " " if nxt is not None and nxt not in _PUNCT else kind)
    return pieces


@lru_cache(maxsize=1 << 12)
def json_piece(piece: str) -> str:
    """The JSON string literal of a token's text (cached: answers reuse a small vocabulary)."""
    return json.dumps(piece, ensure_ascii=False)


def _ids_bytes(ids: list[int]) -> bytes:
    return b"".join(i.to_bytes(4, "little") for i in ids)
