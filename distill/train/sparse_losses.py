"""The losses that see only part of the teacher's distribution, summed over trained positions and
computed a chunk of positions at a time inside the output head's forward, like the others
(losses.py `HeadLoss`):

- **Stored KD** (`--method kd` from `generate --logprobs K`): the forward KL from the teacher's
  stored top-K to the student, over those K tokens plus one bucket for the rest of the mass,
      sum_k p_k (log p_k - log q_k) + r (log r - log q_rest),  r = 1 - sum_k p_k, q_rest = 1 - sum_k q_k,
  at the positions where the training encoding equals the stored ids (elsewhere: CE only). When K
  covers the vocabulary it is the full forward KL.
- **On-policy from sampled-token log-probs** (a served teacher, or a teacher of another
  tokenizer): the student's sampled completion is cut into spans whose boundaries both
  tokenizations share (one token each when the tokenizers are the same); a span's advantage is
  log p_teacher(span) - log p_student(span), detached, and the loss is the policy-gradient step
  -W * advantage * log p_student(span) (Thinking Machines' on-policy distillation). W corrects
  for sampling at a temperature or top-p other than the learner's distribution: the ratio
  p_student(span) / q_sampler(span) (tinker-cookbook's importance-sampling loss; unclipped). The
  logged divergence is the importance-weighted estimate of the reverse KL, sum W (log p_s - log p_t)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class StoredKD:
    ids: torch.Tensor        # [N, K] the teacher's top-K ids at each trained position (-1: none)
    logprobs: torch.Tensor   # [N, K] their log-probs
    mask: torch.Tensor       # [N] bool: the stored ids apply at this position


@dataclass
class Policy:
    teacher: torch.Tensor                  # [N] the teacher's log-prob of the span each position is in
    span: Optional[torch.Tensor] = None    # [N] span number of each position (None: one token each)
    sampler: Optional[torch.Tensor] = None  # [N] log-prob the sampler drew each token with (None: W = 1)

    def chunks(self, n: int, rows: int) -> list[slice]:
        """Chunks of about `rows` positions that never cut a span in two."""
        if self.span is None:
            return [slice(s, min(n, s + rows)) for s in range(0, n, rows)]
        bounds, start = [], 0
        span = self.span.tolist()
        while start < n:
            end = min(n, start + rows)
            while end < n and span[end] == span[end - 1]:
                end += 1
            bounds.append(slice(start, end))
            start = end
        return bounds


def stored_kd_sum(logits: torch.Tensor, stored: StoredKD, rows: slice) -> torch.Tensor:
    """The forward KL over the stored top-K plus the rest-of-mass bucket, summed over the masked
    positions of this chunk of logits [n, V]."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    ids, lp, mask = stored.ids[rows], stored.logprobs[rows].float(), stored.mask[rows]
    valid = ids >= 0
    lq = log_q.gather(1, ids.clamp(min=0))
    p = torch.where(valid, lp.exp(), torch.zeros_like(lp))
    top = (p * (torch.where(valid, lp, torch.zeros_like(lp)) - lq)).sum(-1)
    rest_p = (1.0 - p.sum(-1)).clamp(min=0.0)
    q_top = torch.where(valid, lq.exp(), torch.zeros_like(lq)).sum(-1)
    log_rest_q = torch.log1p(-q_top.clamp(max=1.0 - 1e-7))
    bucket = torch.xlogy(rest_p, rest_p) - rest_p * log_rest_q
    return torch.where(mask, top + bucket, torch.zeros_like(top)).sum()


def policy_terms(logits: torch.Tensor, targets: torch.Tensor, policy: Policy,
                 rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy-gradient loss, CE, importance-weighted reverse KL) summed over this chunk, which
    holds whole spans only."""
    s = F.log_softmax(logits.float(), dim=-1).gather(1, targets[rows].unsqueeze(1)).squeeze(1)
    fixed = s.detach()
    n = s.shape[0]
    local = (policy.span[rows] - policy.span[rows].min()) if policy.span is not None else \
        torch.arange(n, device=s.device)
    spans = int(local.max()) + 1 if n else 0
    s_span = fixed.new_zeros(spans).index_add(0, local, fixed)
    t_span = fixed.new_zeros(spans).scatter(0, local, policy.teacher[rows].to(fixed))
    if policy.sampler is not None:
        w_span = fixed.new_zeros(spans).index_add(0, local, fixed - policy.sampler[rows].to(fixed)).exp()
    else:
        w_span = torch.ones_like(s_span)
    advantage = t_span - s_span
    loss = -(w_span[local] * advantage[local] * s).sum()
    return loss, -s.sum(), (w_span * (s_span - t_span)).sum()
