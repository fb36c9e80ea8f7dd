"""Build a tiny random-weight Llama model and its tokenizer, offline and deterministically.

Runs inside .venv-vllm (it needs torch, transformers and tokenizers):

    .venv-vllm/bin/python bench/real/tiny_model.py --size small --out .models/small
    python3 bench/real/tiny_model.py --size gpu-1b --out .models/gpu-1b  # a GPU host (docs/gpu.md)

The weights are random, so answers are gibberish; prefill cost and the prefix cache are real.
Besides the usual Hugging Face files, the folder gets ``banned_token_ids.json``: the ids that
decode to nothing visible (special tokens, lone bytes of multi-byte characters). Clients pass them
in ``logit_bias`` so that greedy decoding always yields visible text.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOCAB_SIZE = 2048
SEED = 20251121
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"

# ChatML: each message as <|im_start|>role\ncontent<|im_end|>\n, then the assistant's opening.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    """Shape of one model; vocab is shared and embeddings are tied."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int = 2048


SIZES: dict[str, ModelSize] = {
    # ~1.7M parameters: functional tests, fast to start and to run.
    "tiny": ModelSize(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512),
    # ~12.7M parameters: timing, where the prefill cost stands out of the noise.
    "small": ModelSize(hidden=512, layers=4, heads=8, kv_heads=4, intermediate=1376),
    # ~0.97B parameters, the body of Llama-3.2-1B (only the vocab is small): real GPU benchmarks,
    # where several engines share one GPU and sessions carry thousands of tokens of context.
    "gpu-1b": ModelSize(
        hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, max_positions=16384
    ),
}

_SYLLABLES = (
    *(c + v for c in "bdfghklmnprstvz" for v in "aeiou"),
    *("ing", "ion", "ent", "ous", "ast", "est", "ble", "str", "pro", "con", "an", "er", "or"),
)
_PUNCTUATION = (".", ",", "?", "!", ";", ":")


def training_text(lines: int, seed: int = SEED) -> list[str]:
    """Generated pseudo-language with a Zipf-like vocabulary, digits and code-ish lines."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(4000)]
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    text = []
    for i in range(lines):
        n = rng.randint(4, 30)
        chosen = rng.choices(words, weights=weights, k=n)
        if i % 7 == 0:
            chosen.append(str(rng.randint(0, 99999)))
        if i % 11 == 0:
            chosen = [f"{chosen[0]}({', '.join(chosen[1:4])})", "=", *chosen[4:]]
        sentence = " ".join(chosen)
        text.append(sentence[0].upper() + sentence[1:] + rng.choice(_PUNCTUATION))
    return text


def build_tokenizer(lines: list[str], max_length: int = 2048) -> Any:
    """Train a byte-level BPE on ``lines`` and wrap it for transformers with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
    )


def invisible_token_ids(tokenizer: Any) -> list[int]:
    """Ids that decode to an empty or incomplete string: special tokens and partial UTF-8 bytes."""
    banned = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id], skip_special_tokens=True)
        if not text.strip() or "\ufffd" in text:
            banned.append(token_id)
    return banned


def build_model(size: ModelSize, vocab_size: int, eos_id: int, pad_id: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16)


def build(size_name: str, out: Path) -> dict[str, Any]:
    """Write model, tokenizer and banned ids for ``size_name`` into ``out``; return a summary."""
    size = SIZES[size_name]
    tokenizer = build_tokenizer(training_text(lines=20000), max_length=size.max_positions)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = build_model(size, len(tokenizer), eos_id, pad_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    banned = invisible_token_ids(tokenizer)
    (out / "banned_token_ids.json").write_text(json.dumps(banned) + "\n")
    return {
        "size": size_name,
        "out": str(out),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "banned_token_ids": len(banned),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.size, args.out)))


if __name__ == "__main__":
    main()
