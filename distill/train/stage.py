"""`distill train`: fine-tune a dense student on the kept traces (SFT, optionally with logit
distillation from a teacher of the same tokenizer), or distil on-policy (the student samples, a
local or served teacher scores every sampled token: onpolicy.py), fully or with LoRA, on one CPU
or, through `accelerate launch`, on many GPUs.

prepare (setup.py: data, tokenizer, teacher checks, memory estimate), build (models and trainer,
resuming from the last complete checkpoint), fit, save. The output folder is the model:
safetensors, tokenizer, chat template, generation config, plus train_summary.json, loss.png,
README.md and train.json."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from pathlib import Path

from distill.backends.recorded import RECORD, record, recorded_prompt
from distill.core.chat import load_prompt_template
from distill.core.io import write_json
from distill.core.progress import info
from distill.core.records import StageRecord

from . import models
from .checkpoints import announce_resume, clear_unusable, resume_point
from .config import TrainConfig
from .onpolicy_setup import on_policy_summary
from .report import largest_over_processes, peak_memory_mb, plot_losses, training_summary, write_model_card
from .setup import Device, TrainData, build_trainer, device_settings, fingerprint, prepare, say_what_fits
from .trainer import StepClock

FINAL_STAGING = ".tmp-final-model"  # one fixed name, so that every process saves into the same folder


def run(config: TrainConfig) -> dict:
    out, main = Path(config.out), int(os.environ.get("RANK", "0")) == 0
    data = prepare(config)  # every bad input is found before anything heavy is loaded or written
    device = device_settings(config)
    needed = say_what_fits(config, data, device, main)
    record = StageRecord("train", config, out) if main else contextlib.nullcontext(None)
    with _quiet_libraries(), record as rec:
        if main:
            (out / "train.json").unlink(missing_ok=True)  # the old record must not vouch for new files
        checkpoints, run_id = out / "checkpoints", fingerprint(config, data.source)
        resume_from = resume_point(checkpoints, run_id, config.resume)
        if main:
            clear_unusable(checkpoints, resume_from)
            shutil.rmtree(out / FINAL_STAGING, ignore_errors=True)
        announce_resume(resume_from)
        clock = StepClock()
        trainer = build_trainer(config, data, device, checkpoints, run_id, clock)
        fit(trainer, resume_from, bool(data.heldout))
        staging = out / FINAL_STAGING
        trainer.save_model(str(staging / "adapter" if config.lora else staging))
        peak = largest_over_processes(peak_memory_mb(device.gpu), device.gpu)
        if not main:
            return {}
        summary = summarize(config, data, device, trainer, clock, resume_from, peak, needed)
        del trainer  # the merge loads the base model afresh: two copies must never coexist
        gc.collect()
        rec.outputs = save(config, data, device, staging, out, summary)
        rec.result = {k: summary[k] for k in ("steps", "tokens_seen", "tokens_per_second", "padding_fraction")}
        rec.result.update(summary["final"])
        shutil.rmtree(checkpoints, ignore_errors=True)
    return {"out": str(out), **rec.result}


def fit(trainer, resume_from: Path | None, heldout: bool) -> None:
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if heldout and not any(r.get("step") == trainer.state.global_step and "eval_loss" in r
                           for r in trainer.state.log_history):
        trainer.evaluate()


def summarize(config: TrainConfig, data: TrainData, device: Device, trainer, clock, resume_from: Path | None,
              peak: float, needed: dict) -> dict:
    data_info = data.traces.describe() if data.traces else {"source": config.prompts,
                                                            "prompts": len(data.on_policy.items)}
    summary = training_summary(config, trainer, clock, data.eot.text, _device_name(device), device.world,
                               device.dtype, int(resume_from.name.rsplit("-", 1)[1]) if resume_from else None,
                               data_info, {"train": len(data.train), "heldout": len(data.heldout),
                                           "too_long": data.too_long})
    if data.on_policy is not None:
        summary["on_policy"] = on_policy_summary(config, trainer, data.on_policy.cross_tokenizer)
    if config.method == "kd":
        summary["kd_source"] = "teacher" if config.teacher else "stored"
    if summary.get("kd_source") == "stored":
        matched, trained = trainer.stored_positions["matched"], trainer.stored_positions["trained"]
        summary["stored_logprobs"] = {"k": data.traces.logprobs_meta["k"], "positions_matched": matched,
                                      "positions_unmatched": trained - matched,
                                      "bytes_per_token": data.traces.logprobs_meta["bytes_per_token"]}
        info(f"stored KD: the stored ids fit {matched} of {trained} trained positions (the rest trained on CE only)")
    summary["peak_memory"] = {
        "mb": round(max(peak, peak_memory_mb(device.gpu)), 1), "processes": device.world,
        "measure": "torch.cuda.max_memory_allocated" if device.gpu else "process peak RSS",
        "estimated_mb": round(needed["total"] / 2 ** 20, 1)}
    summary["data_info"] = data_info
    return summary


def save(config: TrainConfig, data: TrainData, device: Device, staging: Path, out: Path, summary: dict) -> list[Path]:
    """The trained weights (LoRA merged) as a plain model folder, moved into `out` beside the
    summary, the loss plot and the model card; returns the files written."""
    if config.lora:
        merged = models.merge_lora(config.student, staging / "adapter", device.dtype, config.trust_remote_code)
        merged.save_pretrained(staging)
        del merged
        gc.collect()
        if config.keep_adapter:
            (staging / "adapter" / "training_args.bin").unlink(missing_ok=True)
        else:
            shutil.rmtree(staging / "adapter")
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the record holds the settings
    models.finish_model_folder(staging, data.tokenizer, data.eot)
    model_files = _move_into(staging, out)
    data_info = summary.pop("data_info")
    write_json(out / "train_summary.json", summary)
    write_json(out / RECORD, prompt_record(config, data))
    what = (f"{len(data.train)} prompts, on-policy" if data.on_policy is not None
            else f"{summary['traces'].get('kept_traces')} traces")
    plot_losses(summary["loss_history"], out / "loss.png", f"{Path(config.student).name} on {what}")
    write_model_card(out / "README.md", config, summary, data_info)
    final = {k: "-" if v is None else f"{v:.4f}" for k, v in summary["final"].items()}
    info(f"[green]✓[/] student saved to {out}: {summary['steps']} steps, loss {final['train_loss']} "
         f"(held-out {final['heldout_loss']}), {summary['tokens_per_second']} tokens/s")
    return [out / name for name in model_files + ["train_summary.json", "loss.png", "README.md", RECORD]]


def prompt_record(config: TrainConfig, data: TrainData) -> dict:
    """How the student was taught to be asked (distill/backends/recorded.py): the template its
    traces' problems were rendered with (generate's, else --prompt-template) and whether they
    reason in a think block; a student trained on from another keeps what that one recorded."""
    earlier = recorded_prompt(f"hf:{config.student}") if Path(config.student).is_dir() else None
    if data.traces is None and earlier is not None:
        return earlier
    template = load_prompt_template((data.traces and data.traces.prompt_template) or config.prompt_template)
    return record(template, data.traces.think if data.traces else True)


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


def _device_name(device: Device) -> str:
    import torch
    if device.gpu:
        return f"{device.world} x {torch.cuda.get_device_name(0)}"
    processes = f"{device.world} processes x " if device.world > 1 else ""
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
