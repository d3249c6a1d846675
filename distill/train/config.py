"""Settings of `distill train` (defaults, YAML and flags all land here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distill.core.config import option
from distill.core.errors import UserError

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class TrainConfig:
    student: str = option("", "Student: a Hugging Face causal LM folder or hub name", input=True)
    traces: str = option("traces", "Traces: a generate folder, its traces/ dataset, samples.jsonl, or a dataset with problem/reasoning/answer", input=True)
    out: str = option("student", "Output folder (a from_pretrained-loadable model)")
    method: str = option("sft", "sft, or kd to add logit distillation from --teacher")
    teacher: Optional[str] = option(None, "KD teacher (same tokenizer as the student)", input=True)
    kd_alpha: float = option(0.5, "KD: weight of the cross-entropy term (1 - alpha on the KL term)")
    kd_temperature: float = option(1.0, "KD: softmax temperature")
    kd_loss: str = option("forward_kl", "KD: forward_kl, reverse_kl or jsd")
    epochs: float = option(3.0, "Training epochs")
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1: use epochs)")
    lr: float = option(5e-5, "Peak learning rate (2e-4 is a usual start for LoRA)")
    batch_size: int = option(8, "Per-device batch size")
    grad_accum: int = option(1, "Gradient accumulation steps")
    max_seq_len: int = option(4096, "Longer samples are dropped (their answers would be cut off)")
    seed: int = option(42, "Random seed")
    eval_fraction: float = option(0.05, "Fraction of traces held out for the eval loss")
    packing: bool = option(True, "Pack each batch into one row without padding and without attention across samples (--no-packing: padded rows)")
    lora: bool = option(False, "Train LoRA adapters (merged into the saved model at the end)")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    warmup_ratio: float = option(0.03, "Warm-up fraction of the schedule")
    lr_scheduler: str = option("cosine", "Learning-rate schedule (any transformers scheduler name)")
    weight_decay: float = option(0.0, "Weight decay")
    max_grad_norm: float = option(1.0, "Gradient clipping (0: off)")
    save_steps: int = option(100, "Checkpoint every N optimizer steps into OUT/checkpoints (removed when training ends)")
    logging_steps: int = option(5, "Log the loss every N steps")
    eval_steps: Optional[int] = option(None, "Held-out loss every N steps (default: 5 times per run)")
    lora_target_modules: list[str] = option(["all-linear"], "LoRA: module names to adapt (all-linear: every linear layer but the output head)")
    keep_adapter: bool = option(False, "LoRA: also keep the unmerged adapter in OUT/adapter")
    attn_implementation: Optional[str] = option(None, "Attention kernel: sdpa, eager or flash_attention_2 (default: flash_attention_2 on a GPU when installed, else sdpa)")
    gradient_checkpointing: Optional[bool] = option(None, "Gradient checkpointing (default: on with a GPU)")
    bf16: Optional[bool] = option(None, "bf16 training (default: on with a bf16-capable GPU; fp32 on CPU)")
    threads: Optional[int] = option(None, "CPU threads (default: all cores; 1 is fastest for tiny models or a busy machine)")
    resume: bool = option(True, "Resume from the last checkpoint in --out when there is one")
    prompt_template: str = option("r1", "User-turn template when the traces do not carry the prompt")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")

    def check(self) -> None:
        if self.method not in ("sft", "kd"):
            raise UserError(f"method: expected sft or kd, got '{self.method}'")
        if self.method == "kd" and not self.teacher:
            raise UserError("teacher: --method kd needs --teacher")
        if self.kd_loss not in KD_LOSSES:
            raise UserError(f"kd_loss: expected one of {', '.join(KD_LOSSES)}, got '{self.kd_loss}'")
        if not 0 <= self.kd_alpha <= 1 or self.kd_temperature <= 0:
            raise UserError("kd_alpha/kd_temperature: need 0 <= kd_alpha <= 1 and kd_temperature > 0")
        if not 0 <= self.eval_fraction < 1:
            raise UserError("eval_fraction: must be in [0, 1)")
        for name in ("batch_size", "grad_accum", "max_seq_len", "save_steps", "logging_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be at least 1")
        if self.lr <= 0:
            raise UserError("lr: must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UserError("epochs/max_steps: give a positive --epochs or --max-steps")
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError("max_steps: a positive number of steps, or -1 to use --epochs")
        if self.threads is not None and self.threads < 1:
            raise UserError("threads: must be at least 1")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise UserError("eval_steps: must be at least 1")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError("warmup_ratio: must be in [0, 1)")
        if not 0 <= self.lora_dropout < 1 or self.lora_alpha < 1:
            raise UserError("lora_alpha/lora_dropout: need lora_alpha >= 1 and 0 <= lora_dropout < 1")
        if not self.lora_target_modules:
            raise UserError("lora_target_modules: name at least one module (or all-linear)")
        if self.attn_implementation not in (None, "sdpa", "eager", "flash_attention_2", "flash_attention_3"):
            raise UserError(f"attn_implementation: expected sdpa, eager, flash_attention_2 or "
                            f"flash_attention_3, got '{self.attn_implementation}'")
