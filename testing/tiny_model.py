"""A tiny random Llama with a real byte-level BPE tokenizer and a ChatML template.

The trainer, evaluator and local teacher run the same code paths on it as on SmolLM2 (chat
template, left padding, EOS handling, LoRA targets) but in seconds, with no download. Everything
is derived from fixed seeds, so two builds produce the same files.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
VOCAB_SIZE = 1024
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_MARKER = ".tiny-llama-complete"

_NAMES = ["Ali", "Mia", "Sam", "Ben", "Zoe", "Liam", "Ava", "Noah", "Emma", "Omar", "Lena", "Raj"]
_ITEMS = ["apples", "marbles", "books", "cookies", "pencils", "stickers", "eggs", "coins", "cards", "shells"]
_PLACES = ["the market", "school", "the park", "the store", "the farm", "the library"]


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Math-word-problem-like lines, with worked answers, to train the BPE merges on."""
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(n):
        who, other = rng.sample(_NAMES, 2)
        item, place = rng.choice(_ITEMS), rng.choice(_PLACES)
        a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
        lines.append(
            f"{who} has {a} {item}. {who} buys {b} more at {place} and gives {c} to {other}. "
            f"How many {item} does {who} have now?"
        )
        lines.append(f"{who} starts with {a} {item}. {a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.\n#### {a + b - c}")
        lines.append(f"Each box holds {c} {item}. There are {b} boxes, so {b} * {c} = {b * c} {item} in total.")
        lines.append(f"The answer is {a * c}. Solve the problem step by step and end with '#### <number>'.")
        lines.append(
            f"A train travels {a} kilometers per hour for {c} hours. What distance does it cover? "
            f"Distance equals speed times time: {a} * {c} = {a * c} kilometers."
        )
        lines.append(
            f"{other} earned ${a} on Monday and ${b} on Tuesday, then spent half of the total on "
            f"{item}. Half of {a + b} is {(a + b) / 2:g}, so {other} kept ${(a + b) / 2:g}."
        )
        lines.append(f"You are a helpful assistant. Question: what is {a} divided by {c}? Answer: {a / c:.2f}")
    return lines


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _build_model(tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so that greedy replies depend on the prompt instead of
        # collapsing to one repeated token: tests need varied, EOS-free and EOS-ending rows.
        initializer_range=0.3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_tiny_llama(out_dir: str | Path) -> Path:
    """Write (once) a tiny LlamaForCausalLM and its tokenizer to `out_dir`; return the folder.

    Written to a temporary sibling and renamed, so concurrent or interrupted builds never leave a
    half-written model behind."""
    out = Path(out_dir)
    if (out / _MARKER).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tokenizer = _build_tokenizer()
        model = _build_model(tokenizer)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text("ok\n")
        if out.exists() and not (out / _MARKER).is_file():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m synthledger.testing.tiny_model --out DIR`: write the tiny model folder for scripts
    and examples (a student that trains and evaluates in seconds)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m synthledger.testing.tiny_model",
                                 description="Write a tiny random Llama (tokenizer + weights) to a folder.")
    ap.add_argument("--out", required=True, help="folder to write (created; kept if already complete)")
    args = ap.parse_args(argv)
    try:
        folder = build_tiny_llama(args.out)
    except ImportError as exc:
        print(f"error: the tiny model needs torch and transformers ({exc.name} is missing); "
              "install them with: pip install 'synthledger[train]'", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
