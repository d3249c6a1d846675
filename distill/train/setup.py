"""Setting up a training run: every bad input found before anything heavy loads (`prepare`), the
device settings and the memory estimate (`device_settings`, `say_what_fits`), then the models and
the trainer (`build_trainer`). stage.py runs them, fits and saves."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import PrinterCallback

from distill.core.config import config_dict
from distill.core.errors import UserError
from distill.core.io import sha256_path
from distill.core.progress import info
from distill.core.tokenizers import load_tokenizer, require_same_tokenizer
from distill.core.traces import EndOfTurn, Traces, encode_traces, end_of_turn, load_traces, split_heldout

from . import models
from .attention import use_packed_attention
from .batching import PackedBatches, PaddedBatches, TraceDataset
from .checkpoints import MarkCompleteCheckpoints
from .config import TrainConfig
from .cross_tokenizer import CrossTokenizerScorer, local_logprobs, teacher_end_of_turn
from .estimate import GB, describe, for_run, what_to_change
from .onpolicy import OnPolicyTrainer, PromptBatches
from .onpolicy_setup import OnPolicyData, local_teacher_path, on_policy_sampling, prepare_on_policy
from .trainer import DistillTrainer, RichProgress, StepClock, training_arguments


@dataclass
class TrainData:
    """What the run trains on, checked and encoded: the traces (None for on-policy runs from
    --prompts), the student's tokenizer and end of turn, the configs of student and teacher."""
    traces: Optional[Traces]
    tokenizer: Any
    eot: EndOfTurn
    student_config: Any
    teacher_path: Optional[str]
    teacher_config: Any
    train: list[dict]
    heldout: list[dict]
    too_long: int
    source: str                               # the traces' source, or --prompts
    on_policy: Optional[OnPolicyData] = None


@dataclass
class Device:
    gpu: bool
    bf16: bool
    checkpointing: bool
    attention: str
    world: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32


def prepare(config: TrainConfig) -> TrainData:
    """Traces, tokenizer, configs and teacher checked and the traces encoded; nothing heavy loads."""
    on_policy = config.method == "on-policy"
    if config.optimizer == "muon" and weights_sharded():
        # Muon orthogonalizes each whole matrix; FSDP and ZeRO hand the optimizer flat shards of them.
        raise UserError("optimizer: muon needs whole weight matrices; FSDP / DeepSpeed shard them "
                        "(use adamw there, or plain data-parallel accelerate for muon)")
    where = f"student: {config.student}"
    traces = None if on_policy and config.prompts else load_traces(config.traces, config.prompt_template)
    tokenizer = load_tokenizer(config.student, "student", config.trust_remote_code)
    eot = end_of_turn(tokenizer, where)
    student_config = models.load_model_config(config.student, "student", config.trust_remote_code)
    served = on_policy and config.teacher.startswith("openai:")
    teacher_path = local_teacher_path(config.teacher) if config.teacher and config.method != "sft" and not served else None
    teacher_config = None
    if teacher_path:
        teacher_config = models.load_model_config(teacher_path, "teacher", config.trust_remote_code)
        if not on_policy:  # logit KD compares the distributions id by id (on-policy aligns spans instead)
            teacher_tokenizer = load_tokenizer(teacher_path, "teacher", config.trust_remote_code)
            require_same_tokenizer(tokenizer, teacher_tokenizer, config.teacher)
    stored = config.method == "kd" and not config.teacher
    if stored:
        require_stored_logprobs(traces, tokenizer, config.traces)
    samples, too_long = [], 0
    if traces is not None:
        samples, too_long = encode_traces(tokenizer, traces.rows, eot, config.max_seq_len, where, stored=stored)
        if not samples:
            raise UserError(f"max_seq_len: all {too_long} traces are longer than {config.max_seq_len} tokens")
    _require_scheduler(config.lr_scheduler)
    data = TrainData(traces, tokenizer, eot, student_config, teacher_path, teacher_config, [], [], too_long,
                     traces.source if traces else config.prompts)
    if on_policy:
        data.on_policy = prepare_on_policy(config, traces, samples, tokenizer, where)
        data.train, data.heldout = data.on_policy.train, data.on_policy.heldout
    else:
        data.train, data.heldout = split_heldout(samples, config.eval_fraction, config.seed)
    return data


def require_stored_logprobs(traces: Traces, tokenizer, source: str) -> None:
    """KD from stored log-probs needs them on every trace, and in the student's vocabulary: the
    teacher's ids of the probe text must be the student's."""
    from distill.core.teacher_logprobs import PROBE
    meta = traces.logprobs_meta
    missing = sum(row["logprobs"] is None for row in traces.rows)
    if meta is None or missing:
        raise UserError(f"traces: {source}: {'no trace holds' if meta is None else f'{missing} traces lack'} stored "
                        "teacher log-probs (generate them with `distill generate --logprobs K`), which --method kd "
                        "without --teacher trains from")
    mine = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    if list(meta["probe_ids"]) != list(mine):
        raise UserError(f"traces: {source}: the stored log-probs are in another vocabulary than the student's "
                        f"({meta.get('teacher')}: the probe text is {len(meta['probe_ids'])} teacher tokens, "
                        f"{len(mine)} student tokens); KD from stored log-probs needs the student's tokenizer")


def device_settings(config: TrainConfig) -> Device:
    gpu = torch.cuda.is_available()
    if config.threads and not gpu:
        torch.set_num_threads(config.threads)
    bf16 = config.bf16 if config.bf16 is not None else gpu and torch.cuda.is_bf16_supported()
    checkpointing = config.gradient_checkpointing if config.gradient_checkpointing is not None else gpu
    return Device(gpu, bf16, checkpointing, config.attn_implementation or _default_attention(gpu),
                  int(os.environ.get("WORLD_SIZE", "1")))


def say_what_fits(config: TrainConfig, data: TrainData, device: Device, main: bool) -> dict:
    """Print the estimated memory per process; on a GPU, refuse a run that cannot fit."""
    needed = for_run(config, data.student_config, data.teacher_config, device.bf16, device.checkpointing,
                     device.world if weights_sharded() else 1)
    if main:
        info(f"memory estimate: {describe(needed)}")
    if device.gpu:
        index = torch.cuda.current_device()
        have = torch.cuda.get_device_properties(index).total_memory
        if needed["total"] * 1.1 > have:
            raise UserError(f"memory: this run needs about {needed['total'] / GB:.1f} GB per GPU "
                            f"(+10% slack) but {torch.cuda.get_device_name(index)} has {have / GB:.1f} GB; "
                            f"change: {what_to_change(config, device.checkpointing)}")
    return needed


def build_trainer(config: TrainConfig, data: TrainData, device: Device, checkpoints: Path, fingerprint: str,
                  clock: StepClock):
    """The models (teacher first: under ZeRO-3 the training arguments turn on partitioned loading,
    which suits the student, trained by the engine, not the teacher, run whole beside it) and the
    trainer: SFT / KD, or on-policy."""
    teacher = None
    if data.teacher_path:
        teacher = models.load_causal_lm(data.teacher_path, "teacher", device.dtype, config.trust_remote_code,
                                        device.attention)
    steps = planned_steps(config, len(data.train), device.world)
    eval_steps = (config.eval_steps or max(1, steps // 5)) if data.heldout else None
    try:
        args = training_arguments(config, str(checkpoints), device.gpu, device.bf16, device.checkpointing,
                                  eval_steps, routed_experts=_has_routed_experts(data.student_config))
    except ValueError as e:
        raise UserError(f"training settings: {' '.join(str(e).split())}") from None
    model = models.load_causal_lm(config.student, "student", device.dtype, config.trust_remote_code, device.attention)
    if config.packing:
        use_packed_attention(model, config.attn_implementation)
        if teacher is not None:
            use_packed_attention(teacher, config.attn_implementation)
    if config.lora:
        model = models.add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout,
                                config.lora_target_modules)
    collator = PackedBatches() if config.packing else PaddedBatches(_pad_id(data.tokenizer, data.eot))
    common = dict(model=model, args=args, processing_class=data.tokenizer, teacher=teacher,
                  optimizer_name=config.optimizer, train_dataset=TraceDataset(data.train),
                  eval_dataset=TraceDataset(data.heldout) if data.heldout else None,
                  callbacks=[MarkCompleteCheckpoints(fingerprint), clock, RichProgress()])
    if data.on_policy is not None:
        args.include_num_input_tokens_seen = "no"  # the trainer counts the sampled tokens itself
        scorer = data.on_policy.scorer
        if data.on_policy.cross_tokenizer and teacher is not None:  # a local teacher of another tokenizer
            scorer = CrossTokenizerScorer(data.tokenizer, data.on_policy.teacher_tokenizer,
                                          teacher_end_of_turn(data.on_policy.teacher_tokenizer, config.teacher),
                                          local_logprobs(teacher.to(args.device).eval()), config.teacher)
            common["teacher"] = None  # it scores sampled spans, not full distributions
        trainer = OnPolicyTrainer(**common, data_collator=PromptBatches(), items=data.on_policy.items,
                                  eot=data.eot, sampling=on_policy_sampling(config), batch_collator=collator,
                                  scorer=scorer, sft_weight=config.sft_weight)
    else:
        trainer = DistillTrainer(**common, data_collator=collator, kd_alpha=config.kd_alpha,
                                 kd_temperature=config.kd_temperature, kd_loss=config.kd_loss)
    trainer.remove_callback(PrinterCallback)
    return trainer


def weights_sharded() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true") for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def _require_scheduler(name: str) -> None:
    from transformers import SchedulerType
    try:
        SchedulerType(name)
    except ValueError:
        names = ", ".join(t.value for t in SchedulerType)
        raise UserError(f"lr_scheduler: unknown schedule '{name}' (one of: {names})") from None


def _default_attention(use_gpu: bool) -> str:
    if use_gpu:
        from transformers.utils import is_flash_attn_2_available
        if is_flash_attn_2_available():
            return "flash_attention_2"
    return "sdpa"


def _has_routed_experts(model_config) -> bool:
    """MoE students leave unrouted experts without gradients, which DDP must be told about."""
    return any(getattr(model_config, name, None) for name in ("num_experts", "num_local_experts", "n_routed_experts"))


def _pad_id(tokenizer, eot) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot.token_id


def planned_steps(config: TrainConfig, n_train: int, world: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = max(1, math.ceil(math.ceil(n_train / (config.batch_size * world)) / config.grad_accum))
    return max(1, math.ceil(per_epoch * config.epochs))


def fingerprint(config: TrainConfig, traces_source: str) -> str:
    """Same settings and same traces: a checkpoint of this run can be resumed."""
    settings = {k: v for k, v in config_dict(config).items() if k not in ("resume", "threads")}
    traces_hash = sha256_path(traces_source) if Path(traces_source).exists() else traces_source
    return hashlib.sha256(json.dumps([settings, traces_hash], sort_keys=True, default=str).encode()).hexdigest()
