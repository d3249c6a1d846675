"""Settings of `distill train` (defaults, YAML and flags all land here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distill.core.config import option
from distill.core.errors import UserError

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
METHODS = ("sft", "kd", "on-policy")
TEACHER_APIS = ("auto", "token-ids", "text")
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    student: str = option("", "Student: a Hugging Face causal LM folder or hub name", input=True)
    traces: str = option("traces", "Traces: a generate folder, its traces/ dataset, samples.jsonl, or a dataset with problem/reasoning/answer", input=True)
    out: str = option("student", "Output folder (a from_pretrained-loadable model)")
    method: str = option("sft", "sft; kd to add logit distillation from --teacher, or without --teacher from the teacher log-probs stored with the traces (generate --logprobs); on-policy: the student samples, --teacher scores every sampled token")
    teacher: Optional[str] = option(None, "KD or on-policy teacher (same tokenizer as the student): a Hugging Face folder or hub id (hf: optional), or for on-policy openai:BASE_URL with --model", input=True)
    model: Optional[str] = option(None, "On-policy: the model name on an openai: teacher server")
    teacher_tokenizer: Optional[str] = option(None, "On-policy: the teacher's tokenizer (folder or hub id) when it is not the student's: its chat template and tokens score the student's samples (a served teacher of another family)")
    api_key_env: Optional[str] = option(None, "On-policy: name of the environment variable holding the openai: server's API key")
    prompts: Optional[str] = option(None, "On-policy: problems to sample on, as generate's --prompts (default: the traces' problems)", input=True)
    samples_per_prompt: int = option(4, "On-policy: completions the student samples per prompt each step")
    temperature: float = option(1.0, "On-policy: the student's sampling temperature")
    top_p: float = option(1.0, "On-policy: nucleus sampling of the student")
    max_new_tokens: int = option(256, "On-policy: token limit of each sampled completion")
    sft_weight: float = option(0.0, "On-policy: weight of the SFT loss on the prompt's trace, added to the reverse KL (needs traces)")
    teacher_api: str = option("auto", "On-policy openai: teacher: token-ids (vLLM/SGLang prompt_logprobs or echo), text (llama.cpp: text prompt, echo), or auto")
    concurrency: int = option(8, "On-policy openai: teacher: scoring requests in flight")
    max_retries: int = option(6, "On-policy openai: teacher: retries per request on 429, 5xx, stalls and dropped connections")
    request_timeout: float = option(120.0, "On-policy openai: teacher: seconds before a scoring request counts as stalled")
    retry_wait: float = option(1.0, "On-policy openai: teacher: seconds before the first retry; doubles with each retry, at most 60")
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
    optimizer: str = option("adamw", "adamw, or muon: Muon (orthogonalized momentum) on the hidden weight matrices, AdamW on embeddings, norms and biases, at the same --lr (Moonlight's RMS matching)")
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
        if self.method not in METHODS:
            raise UserError(f"method: expected one of {', '.join(METHODS)}, got '{self.method}'")
        if self.method == "on-policy" and not self.teacher:
            raise UserError("teacher: --method on-policy needs --teacher")
        if self.method == "kd" and not self.teacher and (self.kd_temperature != 1.0 or self.kd_loss != "forward_kl"):
            raise UserError("kd_temperature/kd_loss: KD from stored log-probs (no --teacher) is the forward KL at "
                            "temperature 1: the stored top-K cannot be re-tempered without the rest of the distribution")
        if self.method == "kd" and self.teacher and self.teacher.startswith("openai:"):
            raise UserError("teacher: kd needs the teacher's full logits, which a server does not return; "
                            "use --method on-policy with an openai: teacher")
        if self.method == "on-policy":
            self._check_on_policy()
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")
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

    def _check_on_policy(self) -> None:
        if self.teacher.startswith("openai:") and not self.model:
            raise UserError("model: an openai: teacher needs --model NAME (the served model)")
        for name in ("samples_per_prompt", "max_new_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be at least 1")
        if not 0 < self.temperature <= 5 or not 0 < self.top_p <= 1:
            raise UserError("temperature/top_p: on-policy sampling needs 0 < temperature <= 5 and 0 < top_p <= 1")
        if self.sft_weight < 0:
            raise UserError("sft_weight: must not be negative")
        if self.sft_weight > 0 and self.prompts:
            raise UserError("sft_weight: the SFT term trains on the traces' problems; leave --prompts out to use it")
        if self.teacher_api not in TEACHER_APIS:
            raise UserError(f"teacher_api: expected one of {', '.join(TEACHER_APIS)}, got '{self.teacher_api}'")
        if self.max_retries < 0 or self.request_timeout <= 0 or self.retry_wait < 0:
            raise UserError("max_retries/request_timeout/retry_wait: must not be negative")
