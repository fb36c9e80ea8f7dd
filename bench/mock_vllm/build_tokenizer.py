"""Write the mock's tokenizer as a real model's files: `tokenizers`' tokenizer.json and a
tokenizer_config.json with the ChatML chat template (bench/mock_vllm/tokenizer/).

    python -m bench.mock_vllm.build_tokenizer

So the router loads the mock's tokenizer like any served model's (--tokenizer
bench/mock_vllm/tokenizer) and computes the token ids the mock prefills, which it needs to find
the mock's blocks from its KV-cache events. The text is split as the mock always split it (a run
of word characters, or one other character, with the whitespace after it), mapped to byte
symbols, and looked up in a WordPiece vocabulary holding every such piece of the benchmark's
workload and the mock's answers (words plain and capitalised, identifiers, numbers 0-999, each
alone or followed by a space or a newline), and the 256 byte symbols with their continuation
forms: a workload word is one token, any other text falls back to pieces down to single bytes,
so unknown words never collide. Deterministic: the same vocabulary, in sorted order, every time.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from bench.load.workload import (
    IDENTIFIER_PARTS,
    VOCABULARY,
    Workload,
    first_message,
    followup,
    session_id,
    system_prompt,
)

from .tokenizer import ANSWER_WORDS, CHAT_TEMPLATE, PIECE, render_chat

FOLDER = Path(__file__).resolve().parent / "tokenizer"
SPECIAL = ("[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
CONTINUATION = "##"


def sample_texts() -> list[str]:
    """Rendered conversations of the benchmark's workload, enough to meet its fixed sentences."""
    texts = []
    for seed in (1, 2):
        workload = Workload(seed=seed, system_words=60, context_words=120, followup_words=12)
        for user in range(4):
            messages: list[dict[str, object]] = [
                {"role": "system", "content": system_prompt(workload)}
            ]
            for turn in range(1, 4):
                text = (
                    first_message(workload, user, 0)
                    if turn == 1
                    else followup(workload, user, 0, turn)
                )
                messages += [{"role": "user", "content": text}]
                messages += [{"role": "assistant", "content": session_id(workload, user, 0)}]
            texts.append(render_chat(list(messages)))
    return texts


def splitter() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def vocabulary() -> list[str]:
    split = splitter()
    words = {*VOCABULARY, *ANSWER_WORDS}
    words |= {w.capitalize() for w in words}
    words |= {str(n) for n in range(1000)}
    words |= {f"{a}_{b}" for a in IDENTIFIER_PARTS for b in IDENTIFIER_PARTS}
    texts = [w + end for w in words for end in ("", " ", "\n")] + sample_texts()
    pieces = {piece for text in texts for piece, _ in split.pre_tokenize_str(text)}
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    pieces.update(alphabet)
    pieces.update(CONTINUATION + symbol for symbol in alphabet)
    pieces.difference_update(SPECIAL)
    return [*SPECIAL, *sorted(pieces)]


def build() -> Tokenizer:
    vocab = {piece: i for i, piece in enumerate(vocabulary())}
    tokenizer = Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=10_000)
    )
    tokenizer.pre_tokenizer = splitter()
    tokenizer.add_special_tokens(list(SPECIAL[1:]))
    return tokenizer


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    tokenizer = build()
    tokenizer.save(str(FOLDER / "tokenizer.json"), pretty=False)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "[UNK]",
        "chat_template": CHAT_TEMPLATE,
    }
    (FOLDER / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"{tokenizer.get_vocab_size()} tokens -> {FOLDER}")


if __name__ == "__main__":
    main()
