"""The Hugging Face Trainer with the loss this stage needs, so that `accelerate launch` runs it
data-parallel, FSDP or DeepSpeed ZeRO without code changes.

The loss is computed here rather than by the model: logits are only projected for trained
positions (prompt and padding positions never reach the vocabulary matrix), a chunk of positions
at a time (head.py, losses.py), the targets come per sample from the collator (packing-safe),
and logit distillation adds the teacher's term."""

from __future__ import annotations

import contextlib
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from distill.core import progress

from .batching import count_tokens
from distill.core.traces import IGNORE
from .head import hidden_and_head, loss_from_model, unwrap
from .losses import LossSpec
from .sparse_losses import Policy, StoredKD


# Batch entries that are loss inputs, not model inputs (batching.per_position makes the last six).
LOSS_INPUTS = ("labels", "shift_labels", "token_weights", "stored_ids", "stored_logprobs", "stored_mask",
               "teacher", "span", "sampler")


def loss_sums(model, batch: dict, teacher=None, kd: tuple = (0.5, 1.0, "forward_kl")):
    """(loss, CE, divergence, trained tokens) of one batch, each summed over its trained tokens;
    without a teacher signal the loss is the CE and the divergence None. The signal is a local
    `teacher` model (logit KD, or on-policy reverse KL at kind reverse_kl), the stored top-K
    log-probs in the batch (`stored_*`), or the teacher's log-probs of the sampled tokens
    (`teacher`, with `span` and `sampler`: sparse_losses.py). An optional `batch["token_weights"]`
    (one float per trained position, in the order of shift_labels[trained]) multiplies each
    position's CE term.

    The logits are never held whole: the final hidden states of the trained positions go to
    head.py, which projects them onto the vocabulary a chunk at a time (memory independent of
    tokens x vocabulary); the teacher's logits are made chunk by chunk from its hidden states."""
    inputs = {k: v for k, v in batch.items() if k not in LOSS_INPUTS}
    trained = batch["shift_labels"].ne(IGNORE)
    spec = LossSpec(batch["shift_labels"][trained], batch.get("token_weights"), kd=kd)
    if "stored_ids" in batch:
        spec.stored = StoredKD(batch["stored_ids"], batch["stored_logprobs"], batch["stored_mask"])
    if "teacher" in batch:
        spec.policy = Policy(batch["teacher"], batch.get("span"), batch.get("sampler"))
    if teacher is not None:
        spec.teacher_hidden, spec.teacher_head = hidden_and_head(teacher, inputs, trained)
    inner = unwrap(model)
    # transformers reads the coefficient from the model (set from its config when it was built)
    balance = getattr(inner.config, "output_router_logits", False) and \
        getattr(inner, "router_aux_loss_coef", getattr(inner.config, "router_aux_loss_coef", 0.0))
    if balance:  # an MoE student with its load-balancing loss on, as transformers adds it to its own loss
        inputs = {**inputs, "output_router_logits": True}
    total, ce, divergence, aux = loss_from_model(model, inputs, trained, spec)
    if balance and aux is not None:
        # the caller divides by the batch's trained tokens: count * coef * aux keeps coef * aux per token
        total = total + balance * aux.to(total) * int(spec.targets.numel())
    if divergence is None:  # plain SFT: the loss is the CE
        return total, None, None, int(spec.targets.numel())
    return total, ce, divergence, int(spec.targets.numel())


class DistillTrainer(Trainer):
    # The loss is divided by the trained-token count of the whole accumulated batch (from the
    # Trainer's `num_items_in_batch`), so the Trainer must not divide it again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, teacher=None, kd_alpha: float = 0.5, kd_temperature: float = 1.0,
                 kd_loss: str = "forward_kl", optimizer_name: str = "adamw", **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer_name = optimizer_name
        self.model_accepts_loss_kwargs = True  # makes the Trainer count trained tokens per step
        self.teacher = teacher
        self.kd = (kd_alpha, kd_temperature, kd_loss)
        self.real_tokens = 0      # this process, this session: for tokens/s and padding
        self.positions = 0
        self.parts = {"ce": 0.0, "kd": 0.0, "tokens": 0}
        self.stored_positions = {"matched": 0, "trained": 0}  # stored KD: positions the stored ids fit
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval()
            self.teacher.requires_grad_(False)

    def create_optimizer(self):
        if self.optimizer_name != "muon" or self.optimizer is not None:
            return super().create_optimizer()
        self.optimizer = muon_with_adamw(self.model, self.args.learning_rate, self.args.weight_decay)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            real, positions = count_tokens(inputs)
            self.real_tokens += real
            self.positions += positions
        total, ce, kd, count = loss_sums(model, inputs, self.teacher, self.kd)
        if model.training and "stored_mask" in inputs:
            self.stored_positions["matched"] += int(inputs["stored_mask"].sum())
            self.stored_positions["trained"] += count
        if model.training and kd is not None:
            self.parts["ce"] += ce.item()
            self.parts["kd"] += kd.item()
            self.parts["tokens"] += count
        loss = total / (num_items_in_batch if num_items_in_batch is not None else count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # devices' gradients are averaged, counts summed
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.parts["tokens"] and "loss" in logs:
            logs["ce"] = round(self.parts["ce"] / self.parts["tokens"], 4)
            logs["kd"] = round(self.parts["kd"] / self.parts["tokens"], 4)
            self.parts = {"ce": 0.0, "kd": 0.0, "tokens": 0}
        super().log(logs, *args, **kwargs)


def muon_weights(model) -> tuple[list, list]:
    """(hidden weight matrices, everything else). Muon orthogonalizes a matrix's update, which
    only means something for the matrices inside the network; the embedding (tied to the output
    head in small models), norms and biases stay with AdamW, as in nanochat and Moonlight."""
    matrices, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            hidden = p.ndim == 2 and "embed" not in name and "lm_head" not in name
            (matrices if hidden else rest).append(p)
    return matrices, rest


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on the hidden matrices and AdamW on the rest, as one optimizer: the param
    groups are the two optimizers' own dicts, so lr schedules, accelerate and checkpoints see
    one object."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.parts = [muon, adamw]
        self.param_groups = muon.param_groups + adamw.param_groups
        self.defaults, self.state = {}, {}

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True):
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state):
        for part, saved in zip(self.parts, state["parts"]):
            part.load_state_dict(saved)


def muon_with_adamw(model, lr: float, weight_decay: float) -> MuonWithAdamW:
    # "match_rms_adamw" scales Muon's update to AdamW's RMS (Moonlight), so one --lr serves both.
    matrices, rest = muon_weights(model)
    muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    return MuonWithAdamW(muon, torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay))


class StepClock(TrainerCallback):
    """Wall and CPU seconds spent in optimizer steps (held-out evaluation and checkpoints
    excluded). CPU seconds stay meaningful on a machine shared with other jobs."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start[0]
            self.cpu_seconds += time.process_time() - self._start[1]
            self._start = None


class RichProgress(TrainerCallback):
    """One rich progress bar with the latest losses (silent with --quiet)."""

    def __init__(self):
        self._stack = contextlib.ExitStack()
        self._bar = self._task = None
        self._shown = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if progress.QUIET or not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        self._bar = self._stack.enter_context(Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=progress.console))
        self._task = self._bar.add_task("training", total=state.max_steps, completed=state.global_step, losses="")

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._bar is None or not logs:
            return
        for key, label in (("loss", "loss"), ("eval_loss", "held-out")):
            if key in logs:
                self._shown[label] = logs[key]
        self._bar.update(self._task, losses="  ".join(f"{k} {v:.3f}" for k, v in self._shown.items()))

    def on_train_end(self, args, state, control, **kwargs):
        self._stack.close()
        self._bar = None


def training_arguments(cfg, output_dir: str, use_gpu: bool, bf16: bool, gradient_checkpointing: bool,
                       eval_steps: int | None, routed_experts: bool = False) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not use_gpu,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        save_only_model=False,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        ddp_find_unused_parameters=routed_experts,
    )
