"""The mock's tokenizer, chat template and answers are deterministic and prefix-stable."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.mock_vllm.tokenizer import answer_tokens, encode, render_chat, split_tokens


@given(st.text(), st.integers(min_value=0, max_value=10_000))
def test_a_text_prefix_tokenizes_to_a_token_prefix_up_to_the_last_partial_token(
    text: str, cut: int
) -> None:
    whole = encode(text)
    part = encode(text[: cut % (len(text) + 1)])
    complete = part[:-1]  # the last token of a prefix may be a partial word
    assert whole[: len(complete)] == complete
    assert "".join(split_tokens(text)) == text


def test_same_text_gives_same_tokens() -> None:
    assert encode("Hello, world!") == encode("Hello, world!")


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
    assert encode("".join(answer)) == encode("".join(answer))
    assert prompt2[: len(prompt1) + len(answer)] == prompt1 + encode("".join(answer))
    assert len(encode("".join(answer))) == len(answer)
