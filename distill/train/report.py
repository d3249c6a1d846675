"""What training leaves besides the weights: `train_summary.json`, `loss.png` and the model card."""

from __future__ import annotations

from pathlib import Path

from distill.core.config import config_dict
from distill.core.io import atomic_path, write_text

CARD_SETTINGS = ("method", "epochs", "max_steps", "lr", "lr_scheduler", "warmup_ratio", "weight_decay",
                 "batch_size", "grad_accum", "max_seq_len", "packing", "lora", "lora_r", "lora_alpha",
                 "lora_dropout", "lora_target_modules", "kd_loss", "kd_alpha", "kd_temperature", "seed",
                 "eval_fraction", "prompt_template", "samples_per_prompt", "temperature", "top_p",
                 "max_new_tokens", "sft_weight")
ON_POLICY_SETTINGS = ("samples_per_prompt", "temperature", "top_p", "max_new_tokens", "sft_weight")


def peak_memory_mb(use_gpu: bool) -> float:
    """This process's peak: allocated GPU memory on a GPU, else its peak resident set (RSS)."""
    if use_gpu:
        import torch
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def largest_over_processes(value: float, use_gpu: bool) -> float:
    """The largest `value` of all processes of the run (every process must call it)."""
    import torch
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if use_gpu else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def loss_history(log_history: list[dict]) -> dict:
    train = [[row["step"], row["loss"]] for row in log_history if "loss" in row and "step" in row]
    if not train:  # fewer steps than logging_steps: the Trainer's run average stands in
        train = [[row["step"], row["train_loss"]] for row in log_history if "train_loss" in row][-1:]
    heldout = [[row["step"], row["eval_loss"]] for row in log_history if "eval_loss" in row]
    history = {"train": train, "heldout": heldout}
    reverse_kl = [[row["step"], row["reverse_kl"]] for row in log_history if "reverse_kl" in row and "step" in row]
    if reverse_kl:  # on-policy: per-token reverse KL of the student's samples against the teacher
        history["reverse_kl"] = reverse_kl
    kd = [[row["step"], row["kd"]] for row in log_history if "kd" in row and "step" in row]
    if kd:  # logit distillation: the divergence term per trained token
        history["kd"] = kd
    return history


def training_summary(cfg, trainer, clock, end_of_turn: str, device: str, world: int, dtype,
                     resumed_from_step: int | None, traces_info: dict, samples: dict) -> dict:
    """train_summary.json. Throughput and padding are measured in this process over this session
    (scaled by the number of processes); tokens seen and the loss history cover the whole run,
    resumed sessions included."""
    history = loss_history(trainer.state.log_history)
    params = list(trainer.model.parameters())
    return {
        "student": cfg.student, "method": cfg.method, "lora": cfg.lora, "packing": cfg.packing,
        "end_of_turn": end_of_turn, "device": device, "dtype": str(dtype).split(".")[-1],
        "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0.0, 4),
        "resumed_from_step": resumed_from_step,
        "samples": samples,
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "tokens_per_second": round(trainer.real_tokens * world / clock.seconds, 1) if clock.seconds else None,
        "padding_fraction": round(1 - trainer.real_tokens / trainer.positions, 4) if trainer.positions else 0.0,
        "train_seconds": round(clock.seconds, 2),
        "train_cpu_seconds": round(clock.cpu_seconds, 2),
        "parameters": {"total": sum(p.numel() for p in params),
                       "trainable": sum(p.numel() for p in params if p.requires_grad)},
        "final": {"train_loss": history["train"][-1][1] if history["train"] else None,
                  "heldout_loss": history["heldout"][-1][1] if history["heldout"] else None,
                  **({"reverse_kl": history["reverse_kl"][-1][1]} if history.get("reverse_kl") else {})},
        "loss_history": history,
        "traces": traces_info,
    }


def plot_losses(history: dict, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if history["train"]:
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, label="train", color="tab:blue")
    if history["heldout"]:
        steps, losses = zip(*history["heldout"])
        ax.plot(steps, losses, "o-", label="held-out", color="tab:orange")
    if history.get("reverse_kl"):
        steps, values = zip(*history["reverse_kl"])
        ax.plot(steps, values, label="reverse KL (student samples)", color="tab:green")
    if history.get("kd"):
        steps, values = zip(*history["kd"])
        ax.plot(steps, values, label="KD divergence", color="tab:purple")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _method_words(method: str) -> str:
    return {"kd": "logit distillation + supervised fine-tuning", "on-policy": "on-policy distillation (reverse KL)"}.get(
        method, "supervised fine-tuning")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _memory_line(peak: dict | None) -> str:
    if not peak:
        return ""
    largest = ", the largest of its processes" if peak["processes"] > 1 else ""
    return (f"\nPeak memory: {peak['mb'] / 1024:.2f} GB ({peak['measure']}{largest}; estimated beforehand "
            f"{peak['estimated_mb'] / 1024:.2f} GB).")


def write_model_card(path: Path, cfg, summary: dict, traces_info: dict) -> Path:
    settings = config_dict(cfg)  # secret fields are already left out
    teacher = traces_info.get("teacher") or "unknown (the traces do not name it)"
    kd_teacher = f"\n- KD teacher (logits): `{cfg.teacher}`" if cfg.method == "kd" else ""
    if cfg.method == "on-policy":
        kd_teacher = f"\n- On-policy teacher (scores the student's own samples): `{cfg.teacher}`"
    rows = "\n".join(f"| `{k}` | {_number(settings[k])} |" for k in CARD_SETTINGS
                     if k in settings and (k.startswith("lora_") is False or cfg.lora)
                     and (k.startswith("kd_") is False or cfg.method == "kd")
                     and (k not in ON_POLICY_SETTINGS or cfg.method == "on-policy"))
    data_rows = "\n".join(f"| {k.replace('_', ' ')} | {_number(v)} |" for k, v in traces_info.items()
                          if k not in ("teacher",) and v is not None and not isinstance(v, dict))
    dropped = traces_info.get("generate_dropped")
    dropped_line = ("\nDropped by `distill generate`: " + ", ".join(f"{k} {v}" for k, v in dropped.items())
                    + ".\n") if isinstance(dropped, dict) and dropped else ""
    final = summary.get("final", {})
    base_model = "" if Path(cfg.student).exists() else f"base_model: {cfg.student}\n"  # hub ids only
    name = Path(cfg.out).resolve().name
    text = f"""---
{base_model}library_name: transformers
pipeline_tag: text-generation
tags:
- distill-edge
- reasoning
- distillation
---

# {name}: a reasoning student of `{cfg.student}`

Fine-tuned by `distill train` ({_method_words(cfg.method)}{', LoRA merged' if cfg.lora else ', full'}) {'on its own samples, scored token by token by a teacher' if cfg.method == 'on-policy' else 'on chain-of-thought traces written by a teacher model and verified against reference answers'}.

- Teacher (traces): `{teacher}`{kd_teacher}
- Student (base): `{cfg.student}`

The model thinks inside `<think> ... </think>`, then answers; it was trained to end its turn
with `{summary.get('end_of_turn')}`, which `generation_config.json` names as the end-of-sequence token.

## Traces

| | |
|---|---|
{data_rows}
{dropped_line}
## Training

| setting | value |
|---|---|
{rows}

Trained {summary.get('steps')} optimizer steps ({_number(summary.get('epochs'))} epochs) on
{summary['samples']['train']} traces ({summary['samples']['heldout']} held out, {summary['samples']['too_long']} longer than
`max_seq_len` dropped); {summary.get('tokens_seen')} tokens seen, {_number(summary.get('tokens_per_second'))} tokens/s on
{summary.get('device')}; padding {100 * summary.get('padding_fraction', 0):.1f}% of the positions computed.
Final loss per trained token: train {_number(final.get('train_loss'))}, held-out {_number(final.get('heldout_loss'))}
(`loss.png`, `train_summary.json`).{_memory_line(summary.get('peak_memory'))}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
messages = [{{"role": "user", "content": "..."}}]
prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "<think>\\n"
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
print(tok.decode(model.generate(**ids, max_new_tokens=1024)[0][ids.input_ids.shape[1]:]))
```

For laptops and Raspberry Pis, `distill export --model {cfg.out}` writes GGUF and ONNX files.
"""
    return write_text(path, text)
