"""The training losses, summed over trained tokens (the caller divides by the token count of the
whole accumulated batch, so that every token weighs the same however the batches fall).

Logit distillation: loss = a * CE + (1 - a) * T^2 * D(teacher, student), with D the forward KL
KL(p_teacher || p_student) (mean-seeking, the classic Hinton loss), the reverse KL
KL(p_student || p_teacher) (mode-seeking, as in MiniLLM) or the Jensen-Shannon divergence, both
distributions taken at temperature T. The T^2 factor keeps the gradient scale of the soft term
independent of T."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import KD_LOSSES


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [N, V] and targets [N] of trained positions."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


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
                     alpha: float, temperature: float, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a * CE + (1 - a) * T^2 * D, CE, D), each summed over the N trained positions."""
    ce = cross_entropy_sum(student_logits, targets)
    kd = divergence_sum(student_logits, teacher_logits, kind, temperature)
    return alpha * ce + (1.0 - alpha) * temperature ** 2 * kd, ce, kd
