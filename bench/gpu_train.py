"""The training parts of bench/gpu.py (see gpu_parts.py for what each measures and how): ours
(`distill train`'s code), TRL's SFTTrainer on the same folder and rows, and one on-policy step.
Each returns a JSON-ready dict; bench/gpu.py runs each in a fresh process."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from gpu_parts import Sizes, Spans, memory, step_timer


def _lr(lora: bool) -> float:
    return 2e-4 if lora else 1e-5  # usual rates; the speed and memory figures do not depend on them


def _train_config(work: Path, sizes: Sizes, out: Path, **fields):
    from distill.core.config import build_config
    from distill.train.config import TrainConfig
    return build_config(TrainConfig, {
        "student": str(work / "student"), "traces": str(work / "traces.jsonl"), "out": str(out),
        "batch_size": sizes.batch, "max_seq_len": sizes.seq_len, "eval_fraction": 0, "save_steps": 10 ** 6,
        "seed": 42, **fields})


def _distill_trainer(config, timer):
    """`distill train`'s setup as distill/train/stage.py runs it: (trainer, memory estimate, device)."""
    from distill.core.progress import set_quiet
    from distill.train.setup import build_trainer, device_settings, fingerprint, prepare, say_what_fits
    from distill.train.trainer import StepClock
    set_quiet(True)
    data = prepare(config)
    device = device_settings(config)
    needed = say_what_fits(config, data, device, main=True)  # refuses a GPU run that cannot fit, as train does
    trainer = build_trainer(config, data, device, Path(config.out) / "checkpoints",
                            fingerprint(config, data.source), StepClock())
    trainer.add_callback(timer)
    return trainer, needed, device


def _settings(device) -> dict:
    return {"dtype": str(device.dtype).split(".")[-1], "gradient_checkpointing": device.checkpointing,
            "attention": device.attention}


def ours(work: Path, sizes: Sizes, lora: bool) -> dict:
    config = _train_config(work, sizes, work / f"ours-{'lora' if lora else 'full'}", max_steps=sizes.steps,
                           logging_steps=sizes.steps, lora=lora, lora_r=sizes.lora_r, lora_alpha=2 * sizes.lora_r,
                           lr=_lr(lora))
    timer = step_timer()
    trainer, needed, device = _distill_trainer(config, timer)
    trainer.train()
    result = {**timer.figures(sizes.warmup), **memory(), **_settings(device), "packing": "packed_sdpa (one row)",
              "estimate_bytes": needed["total"], "estimate_parts": needed["parts"],
              "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
    if result["peak_allocated_bytes"]:
        result["peak_over_estimate"] = round(result["peak_allocated_bytes"] / needed["total"], 3)
    return result


def liger_usable() -> str | None:
    """Why TRL's Liger variant cannot run here, or None."""
    import torch
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    if not torch.cuda.is_available():
        return "Liger's kernels are Triton GPU kernels"
    return None


def trl(work: Path, sizes: Sizes, lora: bool, liger: bool) -> dict:
    """TRL's SFTTrainer with the settings `distill train` uses on a GPU: bf16 weights, gradient
    checkpointing (non-reentrant), sdpa, the same batch and max length, packed (BFD, TRL's
    default, which turns on its padding-free collator), completion-only loss on the same
    prompt/completion rows, the same LoRA."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from distill.core.chat import assistant_message
    gpu = torch.cuda.is_available()
    rows = [json.loads(line) for line in (work / "traces.jsonl").read_text().splitlines()][:sizes.batch * sizes.steps]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant",
                                               "content": assistant_message(r["reasoning"], r["answer"])}]}
                              for r in rows])
    peft_config = None
    if lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=sizes.lora_r, lora_alpha=2 * sizes.lora_r, lora_dropout=0.05,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(work / "student", dtype=torch.bfloat16 if gpu else torch.float32,
                                                 attn_implementation="sdpa")
    timer = step_timer()
    name = f"trl-{'lora' if lora else 'full'}{'-liger' if liger else ''}"
    args = SFTConfig(output_dir=str(work / name), max_steps=sizes.steps, per_device_train_batch_size=sizes.batch,
                     learning_rate=_lr(lora), lr_scheduler_type="cosine", warmup_steps=0.03,
                     logging_steps=sizes.steps, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=not gpu, seed=42, include_num_input_tokens_seen="non_padding",
                     max_length=sizes.seq_len, packing=True, bf16=gpu, gradient_checkpointing=gpu,
                     gradient_checkpointing_kwargs={"use_reentrant": False} if gpu else None,
                     use_liger_kernel=liger, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(work / "student"),
                         peft_config=peft_config, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return {**timer.figures(sizes.warmup), **memory(), "dtype": str(model.dtype).split(".")[-1],
            "gradient_checkpointing": gpu, "attention": "sdpa", "packing": args.packing_strategy,
            "padding_free": bool(getattr(trainer, "padding_free", False)), "liger": liger,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def onpolicy(work: Path, sizes: Sizes) -> dict:
    """On-policy steps from a local teacher of the student's shape: each step samples
    prompts x samples completions of up to new_tokens (random weights rarely stop early), the
    teacher scores them, the student takes its step. Sampling is timed around the trainer's own
    `sample`, scoring around the teacher's forward to its final hidden states (its logits are
    projected a chunk at a time inside the student's loss, which counts as the update)."""
    from distill.train import onpolicy as onpolicy_module
    from distill.train import trainer as trainer_module
    config = _train_config(work, sizes, work / "onpolicy", method="on-policy", teacher=str(work / "teacher"),
                           max_steps=sizes.onpolicy_steps, samples_per_prompt=sizes.samples,
                           max_new_tokens=sizes.new_tokens, temperature=1.0, logging_steps=1, lr=1e-6,
                           batch_size=sizes.prompts)
    spans = Spans()
    timer = step_timer(spans)
    trainer, needed, device = _distill_trainer(config, timer)
    teacher, sample, hidden_and_head = trainer.teacher, onpolicy_module.OnPolicyTrainer.sample, \
        trainer_module.hidden_and_head
    sampled = {"sequences": 0, "tokens": 0}

    def timed_sample(self, *args, **kwargs):
        with spans.span("sampling_seconds"):
            rollouts = sample(self, *args, **kwargs)
        sampled["sequences"] += len(rollouts)
        sampled["tokens"] += sum(len(r["input_ids"]) - r["prompt_len"] for r in rollouts)
        return rollouts

    def timed_hidden_and_head(model, *args, **kwargs):
        if model is not teacher:
            return hidden_and_head(model, *args, **kwargs)
        with spans.span("scoring_seconds"):
            return hidden_and_head(model, *args, **kwargs)

    onpolicy_module.OnPolicyTrainer.sample = timed_sample
    trainer_module.hidden_and_head = timed_hidden_and_head
    trainer.train()
    for step in timer.steps:
        step["update_seconds"] = round(step["seconds"] - step.get("sampling_seconds", 0.0)
                                       - step.get("scoring_seconds", 0.0), 3)
    last, peak = timer.steps[-1], memory()
    if peak["peak_allocated_bytes"]:  # the estimate counts max_seq_len x prompts tokens, not the rollouts
        peak["peak_over_estimate"] = round(peak["peak_allocated_bytes"] / needed["total"], 3)
    return {"steps": timer.steps, "last_step": last, **peak, **_settings(device),
            "prompts": sizes.prompts, "samples_per_prompt": sizes.samples, "max_new_tokens": sizes.new_tokens,
            "sampled_tokens_per_sequence": round(sampled["tokens"] / max(1, sampled["sequences"]), 1),
            "sampled_tokens_per_second": round(sampled["tokens"] / spans.seconds["sampling_seconds"], 1)
            if spans.seconds.get("sampling_seconds") else None, "estimate_bytes": needed["total"]}
