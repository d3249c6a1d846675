"""On-policy distillation (`distill train --method on-policy`): each step the student samples
several completions per prompt with its own chat template (the rendering of generate and eval),
and the teacher scores every token the student chose.

- Local teacher of the student's tokenizer (a Hugging Face model, MoE included): the loss is the
  per-token reverse KL KL(p_student || p_teacher) over the full next-token distribution at the
  sampled positions: the KD loss (`loss_sums`) of kind reverse_kl at T = 1, on the student's own
  samples instead of the teacher's text.
- A scorer (served_teacher.py for an OpenAI-compatible server; cross_tokenizer.py for a teacher
  of another tokenizer, local or served): only the teacher's log-prob of each sampled token, or of
  each span where the two tokenizations share their boundaries, is known. The loss is the
  policy-gradient step of Thinking Machines' on-policy distillation with importance weights for
  the sampler (sparse_losses.py `policy_terms`).

Every micro-batch of an optimizer step is sampled and scored when the step starts
(`get_batch_samples`), so that the loss is normalized by the sampled tokens of the whole
accumulated batch across processes, as SFT normalizes by its trained tokens. The loss forward runs
with dropout off: the advantage comes from the same forward as the gradient, and dropout noise
(LoRA's 0.05 by default) would bias it. Sampling is seeded by the step, micro-batch and process,
inside a forked RNG, so a resumed run samples exactly what the uninterrupted one would have.
Optionally `sft_weight` adds the SFT loss on the prompt's own trace."""

from __future__ import annotations

import contextlib
import hashlib
import time

import numpy as np
import torch

from distill.backends import Sampling
from distill.core.errors import UserError

from .batching import count_tokens
from .trainer import DistillTrainer, loss_sums

REVERSE_KL = (0.0, 1.0, "reverse_kl")  # kd_alpha 0 (no CE on the student's own samples), T = 1


class PromptBatches:
    """A batch of prompts is their indices; the trainer samples the sequences itself."""

    def __call__(self, features: list[dict]) -> dict:
        return {"prompt_index": torch.tensor([f["index"] for f in features], dtype=torch.long)}


def step_seed(seed: int, *parts) -> int:
    """A sampling seed for one (step, micro-batch, process): the same on a resumed run."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@contextlib.contextmanager
def no_dropout(model):
    """Dropout layers in eval mode, the rest of the model as it is (gradient checkpointing, which
    transformers runs only in training mode, stays on)."""
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in dropouts:
        m.eval()
    try:
        yield
    finally:
        for m in dropouts:
            m.train()


class OnPolicyTrainer(DistillTrainer):
    # The loss is divided by the sampled tokens of the whole accumulated batch (counted when the
    # step's rollouts are drawn), so the Trainer must not divide it again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, items: list[dict], eot, sampling: Sampling, batch_collator,
                 scorer=None, sft_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.items, self.eot, self.sampling = items, eot, sampling
        self.batch_collator, self.scorer, self.sft_weight = batch_collator, scorer, sft_weight
        self.rkl = {"sum": 0.0, "tokens": 0}
        self.refused = 0           # sequences the scorer could not score as sampled (this session)
        self.sequences = 0
        # Seconds of this session's training steps: the student sampling, a scorer's requests or
        # forward passes, and the update (loss, backward; a local teacher's forward is in it).
        self.seconds = {"sampling": 0.0, "scoring": 0.0, "update": 0.0}

    # --- rollouts ---------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's prompt batches, each turned into its scored rollouts, and the number of
        sampled tokens of all of them on all processes."""
        prompt_batches = []
        for _ in range(num_batches):
            try:
                prompt_batches.append(next(epoch_iterator))
            except StopIteration:
                break
        rank = self.args.process_index
        batches = [self.rollout_batch(self.model, b, step_seed(self.args.seed, "train", self.state.global_step, micro,
                                                               rank)) for micro, b in enumerate(prompt_batches)]
        return batches, self._get_num_items_in_batch(batches, device)

    def rollout_batch(self, model, prompts: dict, seed: int) -> dict:
        indices = prompts["prompt_index"].tolist()
        started = time.perf_counter()
        rollouts = self.sample(model, [self.items[i] for i in indices], seed)
        sampled = time.perf_counter()
        if model.training:
            self.seconds["sampling"] += sampled - started
        if self.scorer is not None:
            scored = self.scorer.score(rollouts)
            if model.training:
                self.seconds["scoring"] += time.perf_counter() - sampled
            self.sequences += len(rollouts)
            self.refused += sum(s is None for s in scored)
            kept = [(r, s) for r, s in zip(rollouts, scored) if s is not None]
            if not kept:
                raise UserError(f"teacher: {self.scorer.where}: none of the {len(rollouts)} sampled sequences of "
                                "this step could be scored as sampled; the teacher's tokenizer reads them otherwise")
            rollouts = [{**r, "position_data": {**s, "sampler": r["sampler"]}} for r, s in kept]
        batch = self.batch_collator(rollouts)
        batch["prompt_index"] = torch.tensor([r["prompt_index"] for r in rollouts], dtype=torch.long)
        return batch

    def sample(self, model, items: list[dict], seed: int) -> list[dict]:
        from distill.backends.hf import HFBackend
        student = self.accelerator.unwrap_model(model)
        backend = HFBackend("student", student, self.processing_class, len(items) * self.sampling.n)
        backend.eos_ids = list(dict.fromkeys([self.eot.token_id, *backend.eos_ids]))
        sampling = Sampling(n=self.sampling.n, max_new_tokens=self.sampling.max_new_tokens,
                            temperature=self.sampling.temperature, top_p=self.sampling.top_p, seed=seed,
                            sampler_logprobs=True)
        was_training = student.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        student.eval()
        try:
            with torch.random.fork_rng(devices=devices):  # the Trainer's own RNG stream is untouched
                completions = backend.generate([it["prompt_text"] for it in items], sampling)
        finally:
            student.train(was_training)
        rollouts = []
        for item, samples in zip(items, completions):
            for completion in samples:
                ids = list(item["prompt_ids"]) + list(completion.token_ids)
                if completion.stop_token is not None:  # the end of turn is the student's choice too
                    ids.append(completion.stop_token)
                rollouts.append({"input_ids": np.asarray(ids, dtype=np.int32), "prompt_len": len(item["prompt_ids"]),
                                 "prompt_index": item["index"], "user_text": item["user_text"],
                                 "stopped": completion.stop_token is not None,
                                 "sampler": np.asarray(completion.sampler_logprobs, dtype=np.float32)})
        return rollouts

    # --- the loss -------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        if "input_ids" not in inputs:  # held-out prompts: sampled alike at every evaluation
            indices = inputs["prompt_index"].tolist()
            seed = step_seed(self.args.seed, "eval", self.args.process_index, tuple(indices))
            inputs = {k: v.to(self.args.device) for k, v in self.rollout_batch(model, inputs, seed).items()}
        prompt_index = inputs.pop("prompt_index").tolist()
        if training:
            real, positions = count_tokens(inputs)
            self.real_tokens += real
            self.positions += positions
            self.state.num_input_tokens_seen += real
        with no_dropout(model):
            if self.scorer is None:
                total, _, divergence, count = loss_sums(model, inputs, self.teacher, REVERSE_KL)
            else:
                total, _, divergence, count = loss_sums(model, inputs)
        if not training:  # the held-out loss of on-policy training is the held-out reverse KL
            loss = divergence.detach() / count
            return (loss, {}) if return_outputs else loss
        loss = total / (num_items_in_batch if num_items_in_batch is not None else count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # devices' gradients are averaged, counts summed
        if self.sft_weight > 0:
            traces = [self.items[i]["trace"] for i in dict.fromkeys(prompt_index)]
            batch = {k: v.to(self.args.device) for k, v in self.batch_collator(traces).items()}
            ce, _, _, trace_tokens = loss_sums(model, batch)
            loss = loss + self.sft_weight * ce / trace_tokens / self.current_gradient_accumulation_steps
        self.rkl["sum"] += float(divergence.detach())
        self.rkl["tokens"] += count
        return (loss, {}) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        started = time.perf_counter()
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self.seconds["update"] += time.perf_counter() - started

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.rkl["tokens"] and "loss" in logs:
            logs["reverse_kl"] = round(self.rkl["sum"] / self.rkl["tokens"], 5)
            self.rkl = {"sum": 0.0, "tokens": 0}
        super().log(logs, *args, **kwargs)
