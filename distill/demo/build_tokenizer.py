"""Build the demo tokenizer: byte-level BPE with Qwen2's pre-tokenization (digits split one by
one), ChatML special tokens, <think>/</think>, and a ChatML chat template.

    python -m distill.demo.build_tokenizer            # writes data/models/demo-tokenizer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from distill.data import asset
from distill.core.demo_task import load_split

# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen/Qwen2.5-*): digits are single tokens.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
EXTRA_TEXT = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "The answer is \\boxed{42}. So the final answer is 7.",
    "You are a helpful assistant. Hello, world! What is 3 + 4 * 2 - 1 / 5?",
] + ["user assistant system"] * 50


def corpus() -> list[str]:
    texts = list(EXTRA_TEXT)
    for split in ("train", "test"):
        for p in load_split(split):
            texts.append(p["question"])
            texts.append(f"{p['reasoning']}\nSo the answer is \\boxed{{{p['answer']}}}.")
    return texts


def build(out: Path, vocab_size: int = 1024) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL) - len(ADDED),
                                  special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=["<|im_start|>"],
                                   model_max_length=2048, clean_up_tokenization_spaces=False)
    fast.add_tokens(ADDED, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    # Name the tokenizer class that real Qwen2 checkpoints use, so that runtimes keying on it
    # (onnxruntime-genai, llama.cpp's converters) treat the demo tokenizer like Qwen2's.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    # Save once more through the Qwen2Tokenizer class, so that tokenizer.json is exactly what every
    # model folder saved with this tokenizer will carry (that class adds Qwen2's NFC normalizer).
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(out).save_pretrained(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=asset("models", "demo-tokenizer"))
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    print(build(args.out, args.vocab_size))
