"""The mock's tokenizer, chat template and answers: deterministic, prefix-stable, and shipped as
a real model's tokenizer files that the router's tokenization loads."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from bench.load.workload import VOCABULARY, Workload, first_message, followup, system_prompt
from bench.mock_vllm.build_tokenizer import build
from bench.mock_vllm.tokenizer import (
    PIECE,
    TOKENIZER_FOLDER,
    answer_ids,
    answer_tokens,
    encode,
    render_chat,
    tokenizer,
)
from router.prompt_tokens import PromptTokenizer


@given(st.text(), st.integers(min_value=0, max_value=10_000))
def test_a_text_prefix_tokenizes_to_a_token_prefix_up_to_its_last_piece(
    text: str, cut: int
) -> None:
    prefix = text[: cut % (len(text) + 1)]
    pieces = re.findall(PIECE, prefix)
    complete = encode("".join(pieces[:-1]))  # the last piece of a prefix may be a partial word
    assert encode(text)[: len(complete)] == complete


@given(st.lists(st.text(alphabet="abcxyzé_0", min_size=1, max_size=8), min_size=1, max_size=6))
def test_different_texts_never_share_token_ids(words: list[str]) -> None:
    texts = {" ".join(words), " ".join(reversed(words)) + "!"}
    assert len({tuple(encode(t)) for t in texts}) == len(texts)


@given(st.text())
def test_the_fast_encoder_gives_the_shipped_tokenizers_ids(text: str) -> None:
    for sample in (text, f"<|im_start|>user\n{text}<|im_end|>\n"):
        assert encode(sample) == tokenizer().encode(sample, add_special_tokens=False).ids


def test_same_text_gives_same_tokens() -> None:
    assert encode("Hello, world!") == encode("Hello, world!")


def test_a_workload_word_is_one_token() -> None:
    for word in VOCABULARY:
        assert len(encode(word + " ")) == 1, word
    workload = Workload()
    text = first_message(workload, 0, 0)
    assert len(encode(text)) < 1.2 * len(text.split())  # about one token a word


def test_next_turn_prompt_extends_previous_prompt_and_answer() -> None:
    turn1: list[dict[str, object]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Tell me about caches."}]},
    ]
    prompt1 = encode(render_chat(turn1))
    answer = answer_tokens(prompt1, seed=0, count=40)
    turn2: list[dict[str, object]] = [
        *turn1,
        {"role": "assistant", "content": "".join(answer)},
        {"role": "user", "content": "And eviction?"},
    ]
    prompt2 = encode(render_chat(turn2))
    ids = answer_ids(answer)
    assert len(ids) == len(answer)
    assert prompt2[: len(prompt1) + len(answer)] == prompt1 + ids


def test_the_router_tokenizes_chats_as_the_mock_does() -> None:
    router = PromptTokenizer(TOKENIZER_FOLDER)
    workload = Workload(system_words=50, context_words=200)
    messages: list[dict[str, object]] = [
        {"role": "system", "content": system_prompt(workload)},
        {"role": "user", "content": first_message(workload, 1, 2)},
        {"role": "assistant", "content": "the cache, and the ring."},
        {"role": "user", "content": [{"type": "text", "text": followup(workload, 1, 2, 2)}]},
    ]
    body = {"messages": messages}
    assert router.chat_prompt(body) == render_chat(messages)
    assert router.request_tokens("/v1/chat/completions", body) == encode(render_chat(messages))


def test_the_shipped_tokenizer_is_what_the_builder_builds() -> None:
    shipped = json.loads((TOKENIZER_FOLDER / "tokenizer.json").read_text())
    assert json.loads(build().to_str()) == shipped
