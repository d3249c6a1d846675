"""The training losses, summed over trained tokens (the caller divides by the token count of the
whole accumulated batch, so that every token weighs the same however the batches fall).

Logit distillation: loss = a * CE + (1 - a) * T^2 * D(teacher, student), with D the forward KL
KL(p_teacher || p_student) (mean-seeking, the classic Hinton loss), the reverse KL
KL(p_student || p_teacher) (mode-seeking, as in MiniLLM) or the Jensen-Shannon divergence, both
distributions taken at temperature T. The T^2 factor keeps the gradient scale of the soft term
independent of T. Optional per-token weights multiply each position's CE term (on-policy
distillation passes its policy-gradient advantages this way).

`HeadLoss` computes these losses from the final hidden states and the output head's weight, a
chunk of positions at a time, so that at most one chunk of logits exists, forward and backward:
the full computation held N x V logits plus their fp32 copies and log-softmax (2 MB per trained
token at a 152k vocabulary). Each chunk's gradient is taken in the forward pass (autograd on that
chunk's loss gives the gradient of its logits, two matmuls turn it into the hidden states'
gradient and an in-place addition to the head's) and the backward pass only scales it: the same
three matmuls as the full computation, no logits recomputed (unlike a checkpointed chunk loop),
and the backward pass never needs the head's weight again, which under ZeRO-3 and FSDP is only
gathered while the head runs (see head.py). This is the design of Liger's fused linear cross
entropy, kept in plain PyTorch so that it runs on a CPU and covers every KD divergence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import KD_LOSSES
from .sparse_losses import Policy, StoredKD, policy_terms, stored_kd_sum

CHUNK_LOGITS = 1 << 24  # logits per chunk: 64 MB in fp32, a few such tensors alive at once


def chunk_rows(vocab: int, chunk_logits: int = 0) -> int:
    """Positions projected onto a `vocab`-wide head at once: one chunk of logits."""
    return max(1, (chunk_logits or CHUNK_LOGITS) // vocab)


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits [N, V] and targets [N] of trained positions; weights [N] scale each position's term."""
    if weights is None:
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    return (F.cross_entropy(logits.float(), targets, reduction="none") * weights.float()).sum()


def divergence_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                   temperature: float) -> torch.Tensor:
    """Sum over positions of the divergence between the two next-token distributions [N, V].
    The vocabularies are cut to the smaller size: models of one tokenizer often pad their
    embedding matrices to different sizes, and the rows beyond the tokenizer are never used."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    log_s = F.log_softmax(student_logits[..., :vocab].float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits[..., :vocab].float() / temperature, dim=-1)
    if kind == "forward_kl":
        return F.kl_div(log_s, log_t, log_target=True, reduction="sum")
    if kind == "reverse_kl":
        return F.kl_div(log_t, log_s, log_target=True, reduction="sum")
    if kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_s, log_t]), dim=0) - math.log(2.0)
        return 0.5 * (F.kl_div(log_m, log_t, log_target=True, reduction="sum")
                      + F.kl_div(log_m, log_s, log_target=True, reduction="sum"))
    raise ValueError(f"unknown KD loss '{kind}' (one of {', '.join(KD_LOSSES)})")


def distillation_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                     alpha: float, temperature: float, kind: str,
                     weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a * CE + (1 - a) * T^2 * D, CE, D), each summed over the N trained positions."""
    ce = cross_entropy_sum(student_logits, targets, weights)
    kd = divergence_sum(student_logits, teacher_logits, kind, temperature)
    return alpha * ce + (1.0 - alpha) * temperature ** 2 * kd, ce, kd


def identity(logits: torch.Tensor) -> torch.Tensor:
    return logits


@dataclass
class Head:
    """An output projection: logits = transform(hidden @ weight.T + bias)."""
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    transform: Callable[[torch.Tensor], torch.Tensor] = identity

    def logits(self, hidden: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        return self.transform(F.linear(hidden.to(weight.dtype), weight, bias))


@dataclass
class LossSpec:
    """What the chunked loss needs besides the student's hidden states and head."""
    targets: torch.Tensor                          # [N] next-token ids
    token_weights: Optional[torch.Tensor] = None   # [N] multiplies each CE term
    teacher_hidden: Optional[torch.Tensor] = None  # [N, H_teacher]
    teacher_head: Optional[Head] = None
    kd: tuple = (0.5, 1.0, "forward_kl")           # alpha, temperature, kind
    chunk_logits: int = 0                          # logits per chunk (0: CHUNK_LOGITS)
    stored: Optional[StoredKD] = None              # KD from stored top-K log-probs (no teacher loaded)
    policy: Optional[Policy] = None                # on-policy from the teacher's sampled-token log-probs

    @property
    def has_divergence(self) -> bool:
        return self.teacher_head is not None or self.stored is not None or self.policy is not None

    def chunks(self, n: int, rows: int) -> list[slice]:
        if self.policy is not None:
            return self.policy.chunks(n, rows)
        return [slice(s, min(n, s + rows)) for s in range(0, n, rows)]

    def terms(self, logits: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        weights = None if self.token_weights is None else self.token_weights[rows]
        if self.policy is not None:
            return policy_terms(logits, self.targets, self.policy, rows)
        if self.stored is not None:
            alpha = self.kd[0]
            ce = cross_entropy_sum(logits, self.targets[rows], weights)
            kd = stored_kd_sum(logits, self.stored, rows)
            return alpha * ce + (1.0 - alpha) * kd, ce, kd
        if self.teacher_head is None:
            ce = cross_entropy_sum(logits, self.targets[rows], weights)
            return ce, ce, None
        with torch.no_grad():
            teacher_logits = self.teacher_head.logits(self.teacher_hidden[rows])
        alpha, temperature, kind = self.kd
        return distillation_sum(logits, teacher_logits, self.targets[rows], alpha, temperature, kind, weights)


class HeadLoss(torch.autograd.Function):
    """(total, CE, KD) of the trained positions from their hidden states [N, H] and the head;
    only `total` is differentiable.

    Per chunk: the logits are computed without autograd, autograd gives the gradient of the
    chunk's loss with respect to them (through the head's transform), and two matmuls turn that
    into the chunk's hidden-state gradient and an in-place addition to the head's gradient: the
    same three matmuls the full computation does, with one chunk of logits alive at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, head: Head, spec: LossSpec, grad_enabled: bool):
        # forward() runs with autograd off: whether gradients are wanted was decided by the caller
        wanted = [t is not None and t.requires_grad and grad_enabled for t in (hidden, weight, bias)]
        n = hidden.shape[0]
        rows = chunk_rows(weight.shape[0], spec.chunk_logits)
        grad_h = torch.zeros_like(hidden) if wanted[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if wanted[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if wanted[2] else None
        sums = [hidden.new_zeros((), dtype=torch.float32) for _ in range(3)]
        for part in spec.chunks(n, rows):
            h = hidden[part].to(weight.dtype)
            raw = F.linear(h, weight, bias)
            if any(wanted):
                raw.requires_grad_(True)
                with torch.enable_grad():
                    total, ce, kd = spec.terms(head.transform(raw), part)
                    (grad_raw,) = torch.autograd.grad(total, raw)
                grad_raw = grad_raw.to(weight.dtype)
                if grad_h is not None:
                    grad_h[part] = (grad_raw @ weight).to(grad_h.dtype)
                if grad_w is not None:
                    if grad_w.dtype == grad_raw.dtype:
                        grad_w.addmm_(grad_raw.t(), h)
                    else:
                        grad_w += (grad_raw.t() @ h).float()
                if grad_b is not None:
                    grad_b += grad_raw.float().sum(0)
                del grad_raw
            else:
                total, ce, kd = spec.terms(head.transform(raw), part)
            del raw
            for i, value in enumerate((total, ce, kd)):
                if value is not None:
                    sums[i] += value.detach()
        ctx.grads = [None if g is None else g.to(t.dtype) for g, t in zip((grad_h, grad_w, grad_b), (hidden, weight, bias))]
        total, ce, kd = sums
        if not spec.has_divergence:
            kd.fill_(float("nan"))
        ctx.mark_non_differentiable(ce, kd)
        return total, ce, kd

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kd):
        grads, ctx.grads = ctx.grads, None
        return tuple(None if g is None else g * grad_total.to(g.dtype) for g in grads) + (None, None, None)


def head_loss(hidden: torch.Tensor, head: Head, spec: LossSpec):
    """(total, CE, KD or None) summed over the positions of `hidden` [N, H]."""
    if spec.token_weights is not None and spec.token_weights.shape != spec.targets.shape:
        raise ValueError(f"token_weights: expected one weight per trained position {tuple(spec.targets.shape)}, "
                         f"got {tuple(spec.token_weights.shape)}")
    total, ce, kd = HeadLoss.apply(hidden, head.weight, head.bias, head, spec, torch.is_grad_enabled())
    return total, ce, kd if spec.has_divergence else None
