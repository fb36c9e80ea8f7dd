"""The token ids vLLM will prefill for a request, with the served model's own tokenizer.

Loads a model folder's `tokenizer.json` (the `tokenizers` library) and chat template
(`tokenizer_config.json`'s `chat_template`, or `chat_template.jinja`), and renders chat requests
the way vLLM does through transformers: a sandboxed jinja2 environment with trim_blocks and
lstrip_blocks, `tojson` without HTML escaping, `raise_exception` and `strftime_now`; the
messages, `tools`, `add_generation_prompt` (default true), `continue_final_message`, the
request's `chat_template_kwargs` and the tokenizer's special tokens. Content given as parts is
joined with newlines, as vLLM does for string-content templates. The rendered text is encoded
without special tokens (vLLM's default for chat); a completions prompt with them (its default).

Encoding goes through `tokenizers`' batch call, which releases the GIL while it works, so
`request_tokens_async` runs it in a worker thread without holding up the event loop
(docs/design.md, Engine truth, has the measured costs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)  # fmt: skip


class PromptTokenizer:
    """A served model's tokenizer and chat template, loaded once from its folder."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._encode_batch = getattr(
            self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch
        )
        config_path = folder / "tokenizer_config.json"
        config: dict[str, Any] = (
            json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        )
        self.special = {name: _token_text(config.get(name)) for name in SPECIAL_TOKENS}
        template = _default_template(config.get("chat_template"))
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.exists():
            template = jinja_file.read_text(encoding="utf-8")
        self.template = None if template is None else _environment().from_string(template)

    def chat_prompt(self, body: Mapping[str, Any]) -> str:
        """The text vLLM renders for a chat request body (ValueError without a template)."""
        if self.template is None:
            raise ValueError("the tokenizer folder has no chat template")
        messages = [_message(m) for m in body.get("messages") or [] if isinstance(m, Mapping)]
        continue_final = bool(body.get("continue_final_message", False))
        add_generation = bool(body.get("add_generation_prompt", not continue_final))
        kwargs = dict(body.get("chat_template_kwargs") or {})
        if continue_final and messages and isinstance(messages[-1].get("content"), str):
            # The last message stays open: the rendering is cut right after its content.
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + CONTINUE_TAG}
        text = self.template.render(
            **{k: v for k, v in self.special.items() if v is not None},
            **kwargs,
            messages=messages,
            tools=body.get("tools") or None,
            documents=body.get("documents"),
            add_generation_prompt=add_generation,
        )
        if CONTINUE_TAG in text:
            text = text[: text.rindex(CONTINUE_TAG)]
        return text

    def encode(self, text: str, special_tokens: bool = False) -> list[int]:
        # The batch call releases the GIL while it encodes (the single-text `encode` holds it),
        # and the fast variant skips character offsets: about twice as fast, same ids.
        encodings = self._encode_batch([text], add_special_tokens=special_tokens)
        return list(encodings[0].ids)

    def request_tokens(self, path: str, body: Mapping[str, Any]) -> list[int] | None:
        """The prompt token ids of a /v1/chat/completions or /v1/completions body; None when
        there is no single prompt to tokenize."""
        if path.endswith("/chat/completions"):
            special = bool(body.get("add_special_tokens", False))
            return self.encode(self.chat_prompt(body), special)
        if path.endswith("/completions"):
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if isinstance(prompt, str):
                return self.encode(prompt, bool(body.get("add_special_tokens", True)))
            if isinstance(prompt, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt
            ):
                return list(prompt)
        return None

    async def request_tokens_async(self, path: str, body: Mapping[str, Any]) -> list[int] | None:
        """`request_tokens` in a worker thread: the event loop keeps serving meanwhile."""
        return await asyncio.to_thread(self.request_tokens, path, body)


CONTINUE_TAG = "\x00CONTINUE_FINAL_MESSAGE\x00"


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Sequence[str] | None = None,
    sort_keys: bool = False,
) -> str:
    seps = None if separators is None else (separators[0], separators[1])
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=seps, sort_keys=sort_keys
    )


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(form: str) -> str:
    return datetime.now().strftime(form)


def _default_template(template: Any) -> str | None:
    """A template string, or the one named "default" of a list of named templates."""
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named: dict[str, str] = {
            t["name"]: t["template"] for t in template if isinstance(t, dict) and "name" in t
        }
        return named.get("default")
    return None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer configs
        value = value.get("content")
    return value if isinstance(value, str) else None


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and "text" in p]
        message = {**message, "content": "\n".join(texts)}
    return dict(message)
