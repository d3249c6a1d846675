"""How much memory a training run needs, before it starts: weights, gradients, AdamW state,
activations at max_seq_len x batch_size, the chunked loss, and a KD teacher.

The figures are per process and count what scales with the model and the tokens; allocator
slack and the CUDA context come on top (about 10%). Per trained token the model's activations
are what remains: the loss adds one chunk of logits, whatever the trace length (losses.py).

    python -m distill.train.estimate qwen2.5-1.5b --max-seq-len 8192 --batch-size 4 --lora

names one of the architectures typed in below from their public config.json (no downloads), or
a local model folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .losses import chunk_rows

GB = 1024 ** 3
# Public config.json numbers of the students the shipped pipelines train (no hub access needed).
KNOWN = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, attention_bias=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, attention_bias=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, attention_bias=True),
}


@dataclass
class Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    head_dim: int = 0

    @classmethod
    def of(cls, config) -> "Shape":
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        heads = get("num_attention_heads")
        return cls(hidden_size=get("hidden_size"), intermediate_size=get("intermediate_size"),
                   num_hidden_layers=get("num_hidden_layers"), num_attention_heads=heads,
                   num_key_value_heads=get("num_key_value_heads") or heads, vocab_size=get("vocab_size"),
                   tie_word_embeddings=bool(get("tie_word_embeddings", True)),
                   attention_bias=bool(get("attention_bias", get("model_type") == "qwen2")),
                   head_dim=get("head_dim") or 0)

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_linears(self) -> list[tuple[int, int]]:
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.num_attention_heads * self.dim, \
            self.num_key_value_heads * self.dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def matrix_parameters(self) -> int:
        """The decoder layers' weight matrices (what Muon trains)."""
        return self.num_hidden_layers * sum(a * b for a, b in self.layer_linears())

    def parameters(self) -> int:
        per_layer = 2 * self.hidden_size
        if self.attention_bias:
            per_layer += (self.num_attention_heads + 2 * self.num_key_value_heads) * self.dim
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return (self.vocab_size * self.hidden_size + self.matrix_parameters() + self.num_hidden_layers * per_layer
                + self.hidden_size + head)

    def lora_parameters(self, r: int) -> int:
        return self.num_hidden_layers * sum(r * (a + b) for a, b in self.layer_linears())

    def activation_elements_per_token(self, checkpointing: bool) -> int:
        """Tensors autograd keeps per token for the backward pass: with checkpointing each layer's
        input plus one layer recomputed; without, what a decoder layer saves (norms, q/k/v and
        their rotary copies, attention output, the MLP's four intermediate-width tensors)."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.dim, self.num_key_value_heads * self.dim
        layer = 4 * h + 2 * q + 4 * kv + 4 * i
        if checkpointing:
            return self.num_hidden_layers * h + layer
        return self.num_hidden_layers * layer


def estimate(student: Shape, *, tokens: int, lora: bool, lora_r: int = 16, bf16: bool,
             checkpointing: bool, teacher: Shape | None = None, shards: int = 1, muon: bool = False) -> dict:
    """Bytes per process by part. `tokens`: positions of one micro-batch (max_seq_len x batch
    size); `shards`: processes sharing the weights (FSDP / ZeRO-3), 1 for DDP or one process;
    `muon`: one momentum buffer for the hidden matrices instead of AdamW's two moments."""
    width = 2 if bf16 else 4
    params = student.parameters()
    parts = {"weights": params * width / shards}
    if lora:
        trainable = student.lora_parameters(lora_r)
        parts["trainable (LoRA, fp32)"] = trainable * (4 + 4 + 8)  # weight, gradient, AdamW moments
    else:
        trainable = params
        parts["gradients"] = params * width / shards
        if muon:
            matrices = student.matrix_parameters()
            parts["optimizer (Muon + AdamW)"] = (matrices + 2 * (params - matrices)) * width / shards
        else:
            parts["optimizer (AdamW)"] = 2 * params * width / shards
    parts["activations"] = tokens * student.activation_elements_per_token(checkpointing) * width
    rows = min(tokens, chunk_rows(student.vocab_size))
    chunk = rows * student.vocab_size * 4 * (8 if teacher else 4)  # fp32 logits, log-softmax, gradient (x2 for KD)
    head_gradient = 0 if lora else student.vocab_size * student.hidden_size * 4
    parts["loss (one chunk)"] = chunk + head_gradient + tokens * student.hidden_size * width
    if teacher is not None:
        parts["teacher"] = teacher.parameters() * width + tokens * teacher.hidden_size * width
    total = sum(parts.values())
    return {"parts": {k: int(v) for k, v in parts.items()}, "total": int(total), "trainable": trainable,
            "parameters": params}


def describe(result: dict) -> str:
    parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in result["parts"].items())
    return f"{result['total'] / GB:.1f} GB per process ({parts} GB)"


def for_run(config, student_config, teacher_config, bf16: bool, checkpointing: bool, shards: int) -> dict:
    return estimate(Shape.of(student_config), tokens=config.max_seq_len * config.batch_size, lora=config.lora,
                    lora_r=config.lora_r, bf16=bf16, checkpointing=checkpointing,
                    teacher=Shape.of(teacher_config) if teacher_config is not None else None, shards=shards,
                    muon=config.optimizer == "muon")


def what_to_change(config, checkpointing: bool) -> str:
    hints = [] if config.lora else ["--lora"]
    if not checkpointing:
        hints.append("--gradient-checkpointing")
    if config.batch_size > 1:
        hints.append(f"--batch-size {max(1, config.batch_size // 2)} --grad-accum {config.grad_accum * 2}")
    hints.append(f"--max-seq-len {max(256, config.max_seq_len // 2)}")
    hints.append("more GPUs with data/accelerate/fsdp.yaml or deepspeed-zero3.yaml (shards the weights)")
    return ", ".join(hints)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.train.estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=f"one of {', '.join(KNOWN)}, or a model folder")
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--fp32", action="store_true", help="fp32 weights (the CPU default) instead of bf16")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--shards", type=int, default=1, help="processes sharing the weights (FSDP/ZeRO-3)")
    parser.add_argument("--teacher", default=None, help="a KD teacher, named like the model")
    args = parser.parse_args(argv)

    def shape(name: str) -> Shape:
        if name in KNOWN:
            return Shape(**KNOWN[name])
        from transformers import AutoConfig
        return Shape.of(AutoConfig.from_pretrained(name))

    result = estimate(shape(args.model), tokens=args.max_seq_len * args.batch_size, lora=args.lora,
                      lora_r=args.lora_r, bf16=not args.fp32, checkpointing=not args.no_gradient_checkpointing,
                      teacher=shape(args.teacher) if args.teacher else None, shards=args.shards)
    print(f"{args.model}: {result['parameters'] / 1e9:.2f}B parameters, {result['trainable'] / 1e6:.1f}M trained; "
          f"{args.batch_size} x {args.max_seq_len} tokens: {describe(result)}")


if __name__ == "__main__":
    main()
