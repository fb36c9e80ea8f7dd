"""The mock's tokenizer and chat template, shipped as a real model's files, and its answers.

`tokenizer/tokenizer.json` (written by build_tokenizer.py) is a `tokenizers` tokenizer: text split
into words with their trailing whitespace (`PIECE`), and a WordPiece vocabulary holding every word
of the benchmark's workload and of the answers as one token, with fallback to pieces down to
single bytes for any other text;
`tokenizer/tokenizer_config.json` holds the ChatML chat template that `render_chat` renders. The
router loads that folder like any model's (--tokenizer bench/mock_vllm/tokenizer), so it computes
the token ids the mock prefills. Answers are deterministic text derived from the prompt's ids,
built so that when a client appends the answer to the history, the next prompt's tokens extend
prompt + answer exactly.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import xxhash
from tokenizers import Tokenizer

TOKENIZER_FOLDER = Path(__file__).resolve().parent / "tokenizer"
# How text splits into pieces before the vocabulary is consulted: a run of word characters, or
# one other non-space character, with the whitespace after it ("Hello ", ", "); so a prefix of a
# text splits into a prefix of its pieces, all but the last (possibly partial) one.
PIECE = r"\w+\s*|[^\w\s]\s*|\s+"
_PIECE = re.compile(PIECE)


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-symbol map, as the byte-level pre-tokenizer applies it: printable bytes
    stand for themselves, the others for the code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


_BYTE_SYMBOL = _byte_symbols()
# What render_chat renders, as a model's tokenizer_config.json carries it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Answers are drawn from this list; each entry is a single token in any context.
ANSWER_WORDS = [
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


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    """The shipped tokenizer (bench/mock_vllm/tokenizer/tokenizer.json)."""
    return Tokenizer.from_file(str(TOKENIZER_FOLDER / "tokenizer.json"))


@lru_cache(maxsize=1)
def _tables() -> tuple[re.Pattern[str], dict[str, int], dict[str, int]]:
    """The special tokens' split, their ids, and the vocabulary by byte-symbol text."""
    added = {t.content: i for i, t in tokenizer().get_added_tokens_decoder().items()}
    special = re.compile("(" + "|".join(re.escape(t) for t in added) + ")")
    return special, added, tokenizer().get_vocab(with_added_tokens=False)


def encode(text: str) -> list[int]:
    """Token ids of `text`, as vLLM encodes a rendered chat (no special tokens added).

    The same ids as the shipped tokenizer.json (a test checks it), several times faster: special
    tokens split first, then each piece of ASCII text is one vocabulary lookup, cached; a piece
    outside the vocabulary, and other text, go through the tokenizer itself."""
    special, added, _ = _tables()
    ids: list[int] = []
    for i, segment in enumerate(special.split(text)):
        if i % 2:
            ids.append(added[segment])
        elif segment.isascii():  # where Python's and the tokenizer's regex agree on \w
            for piece in _PIECE.findall(segment):
                ids.extend(_piece_ids(piece))
        elif segment:
            ids.extend(tokenizer().encode(segment, add_special_tokens=False).ids)
    return ids


@lru_cache(maxsize=1 << 16)
def _piece_ids(piece: str) -> tuple[int, ...]:
    token = _tables()[2].get("".join(_BYTE_SYMBOL[b] for b in piece.encode()))
    if token is not None:
        return (token,)
    return tuple(tokenizer().encode(piece, add_special_tokens=False).ids)


def answer_ids(pieces: list[str]) -> list[int]:
    """Token ids of an answer's pieces, one per piece: the ids the answer has when it comes
    back in the next turn's prompt (a piece's trailing space belongs to the next word)."""
    ids = encode("".join(pieces))
    if len(ids) == len(pieces):
        return ids
    return [encode(piece.strip() or piece)[0] for piece in pieces]  # not expected: answer words


def message_text(content: object) -> str:
    """The text of a message's content: a string, or ``{"type": "text"}`` parts joined with
    newlines (as vLLM joins them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, dict) and "text" in part
        )
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
            kinds.append(ANSWER_WORDS[(state >> 33) % len(ANSWER_WORDS)])
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
