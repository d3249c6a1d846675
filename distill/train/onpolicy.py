"""On-policy distillation (`distill train --method on-policy`): each step the student samples
several completions per prompt with its own chat template (the rendering of generate and eval),
and the teacher scores every token the student chose.

- Local teacher (a Hugging Face model of the same tokenizer, MoE included): the loss is the
  per-token reverse KL KL(p_student || p_teacher) over the full next-token distribution at the
  sampled positions: the KD loss (`loss_sums`) of kind reverse_kl at T = 1, on the student's own
  samples instead of the teacher's text.
- Served teacher (`openai:BASE_URL`, served_teacher.py): only the teacher's log-prob of each
  sampled token is known. The per-token advantage is -(log p_s(x) - log p_t(x)), detached, and
  the loss sum(-adv * log p_s(x)) is the policy-gradient step of Thinking Machines' on-policy
  distillation; it is `loss_sums` with the advantages as `token_weights`.

Optionally `sft_weight` adds the SFT loss on the prompt's own trace. Built on the HF Trainer (a
subclass of the SFT trainer), so checkpoints, kill-and-resume and `accelerate launch` work as for
SFT. Sampling is seeded by the step (and process), inside a forked RNG, so a resumed run samples
exactly what the uninterrupted one would have."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from distill.backends import Sampling
from distill.core.errors import UserError

from .batching import count_tokens
from distill.core.traces import IGNORE
from .head import hidden_and_head
from .losses import chunk_rows
from .trainer import DistillTrainer, loss_sums

REVERSE_KL = (0.0, 1.0, "reverse_kl")  # kd_alpha 0 (no CE on the student's own samples), T = 1


class PromptBatches:
    """A batch of prompts is their indices; the trainer samples the sequences itself."""

    def __call__(self, features: list[dict]) -> dict:
        return {"prompt_index": torch.tensor([f["index"] for f in features], dtype=torch.long)}


def sampled_token_logprobs(model, batch: dict) -> torch.Tensor:
    """log p(x) of every trained token of the batch under `model`, in shift_labels[trained]
    order, without gradients (the advantage of the policy-gradient step is a constant). The
    head projects a chunk of positions at a time, as in the loss: never N x V logits at once."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels", "token_weights")}
    trained = batch["shift_labels"].ne(IGNORE)
    wanted = batch["shift_labels"][trained]
    hidden, head = hidden_and_head(model, inputs, trained)
    rows = chunk_rows(head.weight.shape[0])
    with torch.no_grad():
        return torch.cat([-F.cross_entropy(head.logits(hidden[i:i + rows]).float(), wanted[i:i + rows], reduction="none")
                          for i in range(0, len(wanted), rows)])


def step_seed(seed: int, *parts) -> int:
    """A sampling seed for one (step, micro-batch, process): the same on a resumed run."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class OnPolicyTrainer(DistillTrainer):
    # Each micro-batch's loss is a mean over its own sampled tokens; the Trainer divides by the
    # accumulation steps (the sampled token counts are not known before the batch is drawn).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, items: list[dict], eot, sampling: Sampling, batch_collator,
                 served=None, sft_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.items, self.eot, self.sampling = items, eot, sampling
        self.batch_collator, self.served, self.sft_weight = batch_collator, served, sft_weight
        self.rkl = {"sum": 0.0, "tokens": 0}
        self.refused = 0           # sequences the served teacher tokenized differently (this session)
        self.sequences = 0
        self._micro = (-1, 0)      # (global step, micro-batch index within it)

    # --- sampling -------------------------------------------------------------------------
    def _seed(self, training: bool, indices: list[int]) -> int:
        rank = self.args.process_index
        if not training:  # the held-out prompts are sampled alike at every evaluation
            return step_seed(self.args.seed, "eval", rank, tuple(indices))
        step, micro = self._micro
        micro = micro + 1 if step == self.state.global_step else 0
        self._micro = (self.state.global_step, micro)
        return step_seed(self.args.seed, "train", self.state.global_step, micro, rank)

    def sample(self, model, items: list[dict], seed: int) -> list[dict]:
        from distill.backends.hf import HFBackend
        student = self.accelerator.unwrap_model(model)
        backend = HFBackend("student", student, self.processing_class, len(items) * self.sampling.n)
        backend.eos_ids = list(dict.fromkeys([self.eot.token_id, *backend.eos_ids]))
        sampling = Sampling(n=self.sampling.n, max_new_tokens=self.sampling.max_new_tokens,
                            temperature=self.sampling.temperature, top_p=self.sampling.top_p, seed=seed)
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
                rollouts.append({"input_ids": np.asarray(ids, dtype=np.int32), "prompt_len": len(item["prompt_ids"])})
        return rollouts

    def _device(self, batch: dict) -> dict:
        return {k: v.to(self.args.device) for k, v in batch.items()}

    # --- the loss -------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        indices = inputs["prompt_index"].tolist()
        items = [self.items[i] for i in indices]
        rollouts = self.sample(model, items, self._seed(training, indices))
        teacher_logprobs = None
        if self.served is not None:
            scored = self.served.score(rollouts, self.processing_class)
            self.sequences += len(rollouts)
            self.refused += sum(s is None for s in scored)
            kept = [(r, s) for r, s in zip(rollouts, scored) if s is not None]
            if not kept:
                raise UserError(f"teacher: {self.served.where}: none of the {len(rollouts)} sampled sequences of "
                                "this step tokenizes on the server as sampled; the server's tokenizer differs "
                                "from the student's")
            rollouts = [r for r, _ in kept]
            teacher_logprobs = torch.tensor([x for _, s in kept for x in s], dtype=torch.float32)
        batch = self._device(self.batch_collator(rollouts))
        if training:
            real, positions = count_tokens(batch)
            self.real_tokens += real
            self.positions += positions
            self.state.num_input_tokens_seen += real

        if self.served is None:
            total, _, divergence, count = loss_sums(model, batch, self.teacher, REVERSE_KL)
            rkl_sum = divergence.detach()
        else:
            student = sampled_token_logprobs(model, batch)
            advantage = teacher_logprobs.to(student) - student  # -(log p_s - log p_t)
            rkl_sum = -advantage.sum()
            count = int(advantage.numel())
            if training:
                total, _, _, count = loss_sums(model, {**batch, "token_weights": advantage}, None)
            else:
                total = rkl_sum
        if not training:  # the held-out loss of on-policy training is the held-out reverse KL
            loss = rkl_sum / count
            return (loss, {}) if return_outputs else loss

        loss = total / count
        if self.sft_weight > 0:
            traces = [it["trace"] for it in items]
            ce, _, _, trace_tokens = loss_sums(model, self._device(self.batch_collator(traces)), None)
            loss = loss + self.sft_weight * ce / trace_tokens
        self.rkl["sum"] += float(rkl_sum)
        self.rkl["tokens"] += count
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.rkl["tokens"] and "loss" in logs:
            logs["reverse_kl"] = round(self.rkl["sum"] / self.rkl["tokens"], 5)
            self.rkl = {"sum": 0.0, "tokens": 0}
        super().log(logs, *args, **kwargs)
