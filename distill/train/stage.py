"""`distill train`: fine-tune a dense student on the kept traces (SFT, optionally with logit
distillation from a teacher of the same tokenizer), or distil on-policy (the student samples, a
local or served teacher scores every sampled token: onpolicy.py), fully or with LoRA, on one CPU
or, through `accelerate launch`, on many GPUs. The output folder is the model: safetensors, tokenizer, chat
template, generation config, plus train_summary.json, loss.png, README.md and train.json."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from distill.core.config import config_dict
from distill.core.errors import UserError
from distill.core.io import sha256_path, write_json
from distill.core.progress import info
from distill.core.records import StageRecord

from .config import TrainConfig

FINAL_STAGING = ".tmp-final-model"  # one fixed name, so that every process saves into the same folder


def run(config: TrainConfig) -> dict:
    import torch
    from transformers import PrinterCallback

    from . import models
    from .attention import use_packed_attention
    from .batching import PackedBatches, PaddedBatches, TraceDataset, split_heldout
    from .chat_format import encode_traces, end_of_turn
    from .checkpoints import MarkCompleteCheckpoints, announce_resume, clear_unusable, resume_point
    from .report import largest_over_processes, peak_memory_mb, plot_losses, training_summary, write_model_card
    from .traces import load_traces
    from .onpolicy import (OnPolicyTrainer, PromptBatches, encode_prompts, local_teacher_path, on_policy_sampling,
                           on_policy_summary, prompt_items, served_teacher)
    from .trainer import DistillTrainer, RichProgress, StepClock, training_arguments

    out = Path(config.out)
    main = int(os.environ.get("RANK", "0")) == 0

    # Every bad input is found before anything heavy is loaded or written.
    on_policy = config.method == "on-policy"
    if config.optimizer == "muon" and _weights_sharded():
        # Muon orthogonalizes each whole matrix; FSDP and ZeRO hand the optimizer flat shards of them.
        raise UserError("optimizer: muon needs whole weight matrices; FSDP / DeepSpeed shard them "
                        "(use adamw there, or plain data-parallel accelerate for muon)")
    traces = None if on_policy and config.prompts else load_traces(config.traces, config.prompt_template)
    tokenizer = models.load_tokenizer(config.student, "student", config.trust_remote_code)
    eot = end_of_turn(tokenizer, f"student: {config.student}")
    student_config = models.load_model_config(config.student, "student", config.trust_remote_code)
    served = served_teacher(config, tokenizer) if on_policy else None
    teacher_path = local_teacher_path(config.teacher) if config.method != "sft" and served is None else None
    teacher_config = None
    if teacher_path:
        teacher_config = models.load_model_config(teacher_path, "teacher", config.trust_remote_code)
        teacher_tokenizer = models.load_tokenizer(teacher_path, "teacher", config.trust_remote_code)
        models.require_same_tokenizer(tokenizer, teacher_tokenizer, config.teacher)
    samples, too_long = [], 0
    if traces is not None:
        samples, too_long = encode_traces(tokenizer, traces.rows, eot, config.max_seq_len, f"student: {config.student}")
        if not samples:
            raise UserError(f"max_seq_len: all {too_long} traces are longer than {config.max_seq_len} tokens")
    if on_policy:
        items = prompt_items(config, traces, samples)
        encode_prompts(tokenizer, items, f"student: {config.student}")
        train_rows, heldout_rows = split_heldout(items, config.eval_fraction, config.seed)
        items = train_rows + heldout_rows
        for index, item in enumerate(items):
            item["index"] = index
    else:
        train_rows, heldout_rows = split_heldout(samples, config.eval_fraction, config.seed)
    _require_scheduler(config.lr_scheduler)

    use_gpu = torch.cuda.is_available()
    if config.threads and not use_gpu:
        torch.set_num_threads(config.threads)
    bf16 = config.bf16 if config.bf16 is not None else use_gpu and torch.cuda.is_bf16_supported()
    checkpointing = config.gradient_checkpointing if config.gradient_checkpointing is not None else use_gpu
    dtype = torch.bfloat16 if bf16 else torch.float32
    attention = config.attn_implementation or _default_attention(use_gpu)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    needed = _say_what_fits(config, student_config, teacher_config, bf16, checkpointing, use_gpu, world, main)

    record = StageRecord("train", config, out) if main else contextlib.nullcontext(None)
    with _quiet_libraries(), record as rec:
        if main:
            (out / "train.json").unlink(missing_ok=True)  # the old record must not vouch for new files
        checkpoints = out / "checkpoints"
        fingerprint = _fingerprint(config, traces.source if traces else config.prompts)
        resume_from = resume_point(checkpoints, fingerprint, config.resume)
        if main:
            clear_unusable(checkpoints, resume_from)
            shutil.rmtree(out / FINAL_STAGING, ignore_errors=True)
        announce_resume(resume_from)

        # The teacher loads before the training arguments exist: under DeepSpeed ZeRO-3 those turn
        # on partitioned loading, which suits the student (trained by the engine) but not the
        # teacher (run outside it, whole on every device).
        teacher = None
        if teacher_path:
            teacher = models.load_causal_lm(teacher_path, "teacher", dtype, config.trust_remote_code, attention)
        steps = _planned_steps(config, len(train_rows), world)
        eval_steps = (config.eval_steps or max(1, steps // 5)) if heldout_rows else None
        try:
            args = training_arguments(config, str(checkpoints), use_gpu, bf16, checkpointing, eval_steps,
                                      routed_experts=_has_routed_experts(student_config))
        except ValueError as e:
            raise UserError(f"training settings: {' '.join(str(e).split())}") from None
        if on_policy:  # the trainer counts the sampled tokens itself
            args.include_num_input_tokens_seen = "no"
        model = models.load_causal_lm(config.student, "student", dtype, config.trust_remote_code, attention)
        if config.packing:
            use_packed_attention(model, config.attn_implementation)
            if teacher is not None:
                use_packed_attention(teacher, config.attn_implementation)
        if config.lora:
            model = models.add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout,
                                    config.lora_target_modules)
        clock = StepClock()
        collator = PackedBatches() if config.packing else PaddedBatches(_pad_id(tokenizer, eot))
        common = dict(model=model, args=args, processing_class=tokenizer, teacher=teacher,
                      optimizer_name=config.optimizer,
                      callbacks=[MarkCompleteCheckpoints(fingerprint), clock, RichProgress()])
        if on_policy:
            trainer = OnPolicyTrainer(
                **common, train_dataset=TraceDataset(train_rows),
                eval_dataset=TraceDataset(heldout_rows) if heldout_rows else None, data_collator=PromptBatches(),
                items=items, eot=eot, sampling=on_policy_sampling(config), batch_collator=collator,
                served=served, sft_weight=config.sft_weight)
        else:
            trainer = DistillTrainer(
                **common, train_dataset=TraceDataset(train_rows),
                eval_dataset=TraceDataset(heldout_rows) if heldout_rows else None, data_collator=collator,
                kd_alpha=config.kd_alpha, kd_temperature=config.kd_temperature, kd_loss=config.kd_loss)
        trainer.remove_callback(PrinterCallback)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if heldout_rows and not any(r.get("step") == trainer.state.global_step and "eval_loss" in r
                                    for r in trainer.state.log_history):
            trainer.evaluate()

        staging = out / FINAL_STAGING
        trainer.save_model(str(staging / "adapter" if config.lora else staging))
        peak = largest_over_processes(peak_memory_mb(use_gpu), use_gpu)
        if not main:
            return {}
        data_info = traces.describe() if traces else {"source": config.prompts, "prompts": len(items)}
        summary = training_summary(config, trainer, clock, eot.text, _device_name(use_gpu, world), world,
                                   dtype, _step_of(resume_from), data_info,
                                   {"train": len(train_rows), "heldout": len(heldout_rows), "too_long": too_long})
        if on_policy:
            summary["on_policy"] = on_policy_summary(config, trainer)
        # The merge loads the base model afresh; the trained model and the teacher go first, so
        # that two copies never coexist.
        del trainer, model, teacher, common
        gc.collect()
        if config.lora:
            merged = models.merge_lora(config.student, staging / "adapter", dtype, config.trust_remote_code)
            merged.save_pretrained(staging)
            del merged
            gc.collect()
            if config.keep_adapter:
                (staging / "adapter" / "training_args.bin").unlink(missing_ok=True)
            else:
                shutil.rmtree(staging / "adapter")
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the record holds the settings
        models.finish_model_folder(staging, tokenizer, eot)
        model_files = _move_into(staging, out)
        summary["peak_memory"] = {
            "mb": round(max(peak, peak_memory_mb(use_gpu)), 1), "processes": world,
            "measure": "torch.cuda.max_memory_allocated" if use_gpu else "process peak RSS",
            "estimated_mb": round(needed["total"] / 2 ** 20, 1)}
        write_json(out / "train_summary.json", summary)
        what = f"{len(train_rows)} prompts, on-policy" if on_policy else f"{summary['traces'].get('kept_traces')} traces"
        plot_losses(summary["loss_history"], out / "loss.png", f"{Path(config.student).name} on {what}")
        write_model_card(out / "README.md", config, summary, data_info)
        shutil.rmtree(checkpoints, ignore_errors=True)
        final = {k: "-" if v is None else f"{v:.4f}" for k, v in summary["final"].items()}
        info(f"[green]✓[/] student saved to {out}: {summary['steps']} steps, loss {final['train_loss']} "
             f"(held-out {final['heldout_loss']}), {summary['tokens_per_second']} tokens/s")
        rec.outputs = [out / name for name in model_files + ["train_summary.json", "loss.png", "README.md"]]
        rec.result = {k: summary[k] for k in ("steps", "tokens_seen", "tokens_per_second", "padding_fraction")}
        rec.result.update(summary["final"])
    return {"out": str(out), **rec.result}


def _say_what_fits(config, student_config, teacher_config, bf16: bool, checkpointing: bool, use_gpu: bool,
                   world: int, main: bool) -> dict:
    """Print the estimated memory per process; on a GPU, refuse a run that cannot fit."""
    import torch

    from .estimate import GB, describe, for_run, what_to_change
    needed = for_run(config, student_config, teacher_config, bf16, checkpointing, world if _weights_sharded() else 1)
    if main:
        info(f"memory estimate: {describe(needed)}")
    if use_gpu:
        device = torch.cuda.current_device()
        have = torch.cuda.get_device_properties(device).total_memory
        if needed["total"] * 1.1 > have:
            raise UserError(f"memory: this run needs about {needed['total'] / GB:.1f} GB per GPU "
                            f"(+10% slack) but {torch.cuda.get_device_name(device)} has {have / GB:.1f} GB; "
                            f"change: {what_to_change(config, checkpointing)}")
    return needed


def _weights_sharded() -> bool:
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


def _planned_steps(config: TrainConfig, n_train: int, world: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = max(1, math.ceil(math.ceil(n_train / (config.batch_size * world)) / config.grad_accum))
    return max(1, math.ceil(per_epoch * config.epochs))


def _fingerprint(config: TrainConfig, traces_source: str) -> str:
    """Same settings and same traces: a checkpoint of this run can be resumed."""
    settings = {k: v for k, v in config_dict(config).items() if k not in ("resume", "threads")}
    traces_hash = sha256_path(traces_source) if Path(traces_source).exists() else traces_source
    return hashlib.sha256(json.dumps([settings, traces_hash], sort_keys=True, default=str).encode()).hexdigest()


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None


def _move_into(staging: Path, out: Path) -> list[str]:
    """Move the finished model files into the output folder one rename at a time, after removing
    weight files of an earlier model that the new one does not have."""
    names = sorted(p.name for p in staging.iterdir())
    for old in list(out.glob("*.safetensors")) + list(out.glob("*.safetensors.index.json")):
        if old.name not in names:
            old.unlink()
    if (out / "adapter").is_dir() and "adapter" not in names:
        shutil.rmtree(out / "adapter")
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()
    return names


def _device_name(use_gpu: bool, world: int) -> str:
    import torch
    if use_gpu:
        return f"{world} x {torch.cuda.get_device_name(0)}"
    processes = f"{world} processes x " if world > 1 else ""
    return f"{processes}CPU ({torch.get_num_threads()} threads)"


@contextlib.contextmanager
def _quiet_libraries():
    """Trainer and model loading talk a lot; the stage reports through its own progress bar."""
    import warnings

    from transformers.utils import logging as hf_logging
    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
