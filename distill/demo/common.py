"""Pieces shared by the demo model builds: R1-format training examples, a small resumable
training loop for CPU, pass@1 on the demo test split measured with the same prompt the pipeline
uses, and saving a model folder that the pipeline's consumers load."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch

from distill.core.answers import split_response, is_correct
from distill.core.chat import THINK_OPEN, assistant_message, load_prompt_template, render_prompt, user_message
from distill.core.io import atomic_dir, atomic_path
from distill.core.progress import info, progress_bar

IGNORE = -100
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def settings_fingerprint(args) -> str:
    """The settings that shape a training run (not where it writes, its thread count, its
    length or how it is measured afterwards, so that a build can be resumed or extended)."""
    skip = ("out", "work", "threads", "steps", "sampled_evals")
    keep = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    return json.dumps(keep, default=str)


def r1_completion(reasoning: str, answer: str) -> str:
    """What the assistant writes after the prompt's "<think>\\n" prefill."""
    return assistant_message(reasoning, f"\\boxed{{{answer}}}")[len(THINK_OPEN) + 1:]


def chat_examples(tokenizer, pairs: list[tuple[str, str]], template: str = "r1") -> list[dict]:
    """Token ids of R1 chat turns, one per (question, completion), with labels that score only
    the assistant's part.

    The assistant's part starts at the think block, so the model learns to open it by itself,
    and ends with the end-of-turn token, so generation stops there."""
    tpl = load_prompt_template(template)
    prompts = [render_prompt(tokenizer, user_message(q, tpl)) for q, _ in pairs]
    heads = [p[: -len(THINK_OPEN) - 1] for p in prompts]  # "...<|im_start|>assistant\n"
    texts = [p + c + tokenizer.eos_token for p, (_, c) in zip(prompts, pairs)]
    head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    examples = []
    for head, ids in zip(head_ids, full_ids):
        if ids[:len(head)] != head:
            raise ValueError("the chat prompt does not tokenize as a prefix of the full turn")
        examples.append({"input_ids": ids, "labels": [IGNORE] * len(head) + ids[len(head):]})
    return examples


def text_examples(tokenizer, texts: list[str]) -> list[dict]:
    """Plain texts with the loss on every token (pretraining)."""
    ids = tokenizer([t + tokenizer.eos_token for t in texts], add_special_tokens=False)["input_ids"]
    return [{"input_ids": i, "labels": list(i)} for i in ids]


def batch_order(examples: list[dict], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length (little padding) in a seeded random order."""
    rng = random.Random(seed * 100003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(examples[i]["input_ids"]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size] or batches


def collate(examples: list[dict], pad_id: int) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _schedule(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(path: Path, state: dict) -> None:
    """A training state as one safetensors file (no pickle): the model's and the optimizer's
    tensors by name, everything else as JSON in the file's metadata."""
    from safetensors.torch import save_file

    tensors, aliases, first_of = {}, {}, {}
    for k, v in state["model"].items():  # tied weights: one tensor, the other names aliases
        if v.data_ptr() in first_of:
            aliases[k] = first_of[v.data_ptr()]
        else:
            first_of[v.data_ptr()] = k
            tensors[f"model/{k}"] = v.detach().contiguous()
    for pid, slots in state["optim"]["state"].items():
        tensors.update({f"optim/{pid}/{k}": v.contiguous() for k, v in slots.items()})
    rest = {k: v for k, v in state.items() if k not in ("model", "optim")}
    rest["param_groups"], rest["aliases"] = state["optim"]["param_groups"], aliases
    save_file(tensors, str(path), metadata={"state": json.dumps(rest)})


def load_checkpoint(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        rest = json.loads(f.metadata()["state"])
        model, slots = {}, {}
        for key in f.keys():
            kind, _, name = key.partition("/")
            if kind == "model":
                model[name] = f.get_tensor(key)
            else:
                pid, _, slot = name.partition("/")
                slots.setdefault(int(pid), {})[slot] = f.get_tensor(key)
    model.update({k: model[v] for k, v in rest.pop("aliases").items()})
    optim = {"state": slots, "param_groups": rest.pop("param_groups")}
    return {"model": model, "optim": optim, **rest}


def train(model, examples: list[dict], *, steps: int, batch_size: int, lr: float, pad_id: int,
          work_dir: Path, seed: int, warmup: int = 100, weight_decay: float = 0.01,
          checkpoint_every: int = 200, model_kwargs: dict | None = None,
          on_checkpoint=None, fingerprint: str = "", stop_at: int | None = None) -> dict:
    """AdamW with warm-up and cosine decay for `steps` optimizer steps (the schedule's length;
    with `stop_at`, training ends at that step of it). A checkpoint in
    `work_dir` is written every `checkpoint_every` steps and picked up on a rerun, so a killed
    build continues where it stopped (the batch order is a function of the seed and the step).
    A checkpoint written with another `fingerprint` (other settings) is not resumed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = work_dir / "checkpoint.safetensors"
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: _schedule(s, steps, warmup))
    step, losses = 0, []
    state = load_checkpoint(checkpoint) if checkpoint.is_file() else None
    if state is not None and state.get("fingerprint", fingerprint) != fingerprint:
        info(f"{checkpoint} was written with other settings; starting over")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        step, losses = state["step"], state["losses"]
        info(f"resuming from {checkpoint} at step {step}")
    torch.manual_seed(seed + step)
    model.train()
    per_epoch = batch_order(examples, batch_size, seed, 0)
    epoch, index = divmod(step, len(per_epoch))
    order = batch_order(examples, batch_size, seed, epoch)
    started = time.time()
    last = steps if stop_at is None else min(stop_at, steps)
    with progress_bar("training", last) as advance:
        advance(step)
        while step < last:
            if index == len(order):
                epoch, index = epoch + 1, 0
                order = batch_order(examples, batch_size, seed, epoch)
            batch = collate([examples[i] for i in order[index]], pad_id)
            index += 1
            loss = model(**batch, **(model_kwargs or {})).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 4))
            step += 1
            advance()
            if step % 50 == 0:
                info(f"step {step}/{steps} loss {sum(losses[-50:]) / 50:.4f} "
                     f"lr {sched.get_last_lr()[0]:.2e} ({time.time() - started:.0f} s)")
            if step % checkpoint_every == 0 or step == last:
                with atomic_path(checkpoint) as tmp:
                    save_checkpoint(tmp, {"model": model.state_dict(), "optim": optim.state_dict(),
                                          "sched": sched.state_dict(), "step": step, "losses": losses,
                                          "fingerprint": fingerprint})
                if on_checkpoint is not None and step < last:
                    on_checkpoint(step)
                    model.train()
    model.eval()
    return {"steps": last, "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
            "seconds_this_run": round(time.time() - started, 1)}


@torch.no_grad()
def complete(model, tokenizer, questions: list[str], *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, batch_size: int = 50, max_new_tokens: int = 128, template: str = "r1",
             description: str = "generating") -> list[str]:
    """The model's answers to demo questions with the pipeline's prompt: the chat template and
    the assistant turn opened with "<think>\\n" (the texts returned start after it)."""
    model.eval()
    tokenizer.padding_side = "left"
    tpl = load_prompt_template(template)
    prompts = [render_prompt(tokenizer, user_message(q, tpl)) for q in questions]
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 \
        else dict(do_sample=False)
    torch.manual_seed(seed)
    texts = []
    with progress_bar(description, len(prompts)) as advance:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, top_k=None, **sampling)
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            advance(len(out))
    return texts


def grade(text: str, reference: str) -> tuple[bool, bool]:
    """(correct, think block closed) for a completion written after the "<think>\\n" prefill."""
    resp = split_response(text, prefill=f"{THINK_OPEN}\n")
    return is_correct(resp.answer, reference), resp.think_closed


def pass_at_1(model, tokenizer, rows: list[dict], *, temperature: float = 0.0, top_p: float = 1.0,
              samples: int = 1, seed: int = 0, batch_size: int = 50, max_new_tokens: int = 128) -> dict:
    """pass@1 on demo rows ({question, answer}), averaged over `samples` samples per problem."""
    correct = closed = 0
    failures = []
    for k in range(samples):
        texts = complete(model, tokenizer, [r["question"] for r in rows], temperature=temperature,
                         top_p=top_p, seed=seed + k, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, description=f"pass@1 (T={temperature})")
        for row, text in zip(rows, texts):
            ok, think_closed = grade(text, row["answer"])
            correct += ok
            closed += think_closed
            if not ok and len(failures) < 5:
                failures.append({"question": row["question"], "reference": row["answer"], "response": text})
    total = len(rows) * samples
    return {"pass@1": correct / total, "think_closed": closed / total, "n": len(rows),
            "temperature": temperature, "top_p": top_p, "samples": samples, "failures": failures}


def save_model(model, tokenizer, out: Path, dtype: torch.dtype, tokenizer_dir: Path) -> Path:
    """A from_pretrained folder: safetensors weights in `dtype` (the model is left in it), the
    tokenizer files copied byte for byte from `tokenizer_dir` (a save_pretrained would rewrite
    them with this session's padding side and library defaults), and a generation config that
    stops at the end-of-turn token."""
    from transformers import GenerationConfig

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    model.config.eos_token_id = eos
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=None, do_sample=False)
    with atomic_dir(out) as tmp:
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, tmp / name)
    return out
