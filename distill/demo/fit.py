"""Training the demo's own models (the MoE teacher, the student base) with the project's trainer:
the same `DistillTrainer`, chunked loss, packed batches and checkpoints as `distill train`, given
token ids directly (a build's examples are made in code, not read from traces) and a schedule of
its own: warm-up, then cosine decay to a tenth of the peak over `steps`, optionally stopped early
at `stop_at` (a build that decays in a second phase). A killed build resumes from its last
complete checkpoint in `work_dir` when the same settings (`fingerprint`) are given again.

Examples are {input_ids, prompt_len}: the loss covers the tokens after `prompt_len` (0 for plain
text, the chat prompt's length for an assistant turn)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from distill.core.progress import info
from distill.train.attention import use_packed_attention
from distill.train.batching import PackedBatches, TraceDataset
from distill.train.checkpoints import MarkCompleteCheckpoints, clear_unusable, resume_point
from distill.train.trainer import DistillTrainer, RichProgress


class _Stops(TrainerCallback):
    """Ends the run at `stop_at` (with a checkpoint) and calls `on_checkpoint(step)` after each save."""

    def __init__(self, stop_at: int, on_checkpoint: Optional[Callable[[int], None]]):
        self.stop_at, self.on_checkpoint = stop_at, on_checkpoint

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.stop_at:
            control.should_training_stop = control.should_save = True

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.on_checkpoint is not None and state.global_step < self.stop_at:
            self.on_checkpoint(state.global_step)
            model.train()


def fit(model, examples: list[dict], *, steps: int, batch_size: int, lr: float, work_dir: Path, seed: int,
        warmup: int = 100, weight_decay: float = 0.01, checkpoint_every: int = 200, stop_at: int | None = None,
        on_checkpoint: Optional[Callable[[int], None]] = None, fingerprint: str = "") -> dict:
    samples = [{"input_ids": np.asarray(e["input_ids"], dtype=np.int32), "prompt_len": int(e["prompt_len"]),
                "problem": i} for i, e in enumerate(examples)]
    stop_at = steps if stop_at is None else min(stop_at, steps)
    args = TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=warmup,
        weight_decay=weight_decay, adam_beta2=0.98, max_grad_norm=1.0, seed=seed, data_seed=seed, use_cpu=True,
        logging_steps=50, save_strategy="steps", save_steps=checkpoint_every, save_total_limit=2,
        remove_unused_columns=False, dataloader_num_workers=0, report_to="none", disable_tqdm=True,
        log_level="error", include_num_input_tokens_seen="no")
    use_packed_attention(model, None)
    trainer = DistillTrainer(model=model, args=args, train_dataset=TraceDataset(samples), data_collator=PackedBatches(),
                             callbacks=[MarkCompleteCheckpoints(fingerprint), _Stops(stop_at, on_checkpoint),
                                        RichProgress()])
    trainer.remove_callback(PrinterCallback)
    resume = resume_point(Path(work_dir), fingerprint, True)
    clear_unusable(Path(work_dir), resume)
    started = time.time()
    if resume is not None and int(resume.name.rsplit("-", 1)[1]) >= stop_at:  # this phase is done: its weights
        from safetensors.torch import load_model
        load_model(model, str(resume / "model.safetensors"), strict=False)
        model.eval()
        info(f"{resume}: this phase is finished; its weights are taken as they are")
        return {"steps": stop_at, "final_loss": None, "seconds_this_run": 0.0}
    if resume is not None:
        info(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    model.eval()
    return {"steps": trainer.state.global_step, "final_loss": losses[-1] if losses else None,
            "seconds_this_run": round(time.time() - started, 1)}
