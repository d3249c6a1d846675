"""Run a causal LM up to its output head and compute the loss inside the head's own forward.

The model is called as a whole (through whatever wraps it: DDP, FSDP, a DeepSpeed engine, PEFT)
with `logits_to_keep` set to the trained positions, and for that one call the output head's
forward is replaced: instead of projecting onto the vocabulary it receives the final hidden
states of exactly those positions and returns the chunked loss (losses.HeadLoss), which the model
then hands back as its `logits`. Keeping the computation inside the head's forward is what makes
it safe under sharding: DeepSpeed ZeRO-3 gathers a module's parameters in its forward hooks and
releases them after, and FSDP2 unshards the root unit (which holds the head and the tied
embeddings) around the root's forward, so the weight is whole exactly while the loss needs it.
Reading `lm_head.weight` after the forward instead would see an empty ZeRO-3 shard (the bug TRL
fixed with `GatheredParameters`, and that Liger's fused loss hits when the head is wrapped on its
own). Because HeadLoss takes each chunk's gradient in the forward, the backward pass never needs
the weight again; the value returned still flows through the model's outputs, so the wrappers'
backward hooks (gradient reduce-scatter, DDP all-reduce) see it as usual.

Architectures that change the logits after the head (Gemma 2/3 soft-capping) are handled by
switching that off for the call and applying it per chunk; any other change is detected (the
model's returned value is not the loss the head returned) and refused."""

from __future__ import annotations

import contextlib

import torch

from distill.core.errors import UserError

from .losses import Head, LossSpec, head_loss


def _softcap(cap: float):
    def transform(logits: torch.Tensor) -> torch.Tensor:
        return torch.tanh(logits / cap) * cap
    return transform


# config attribute -> (value that switches it off in the model's forward, per-chunk transform)
LOGIT_TRANSFORMS = {"final_logit_softcapping": (None, _softcap)}


def unwrap(model):
    """The transformers (or PEFT) model inside DDP, DeepSpeed and accelerate wrappers."""
    from transformers import PreTrainedModel
    try:
        from peft import PeftModel
        models = (PreTrainedModel, PeftModel)
    except ImportError:  # peft is a dependency; kept importable without it for the bench's baseline
        models = (PreTrainedModel,)
    while not isinstance(model, models) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def output_head(model) -> torch.nn.Linear:
    head = unwrap(model).get_output_embeddings()
    # FSDP2 turns the class into a subclass (FSDPLinear) without changing its forward; PEFT's
    # LoRA and modules_to_save wrappers are not Linear layers at all.
    if not isinstance(head, torch.nn.Linear) or type(head).forward is not torch.nn.Linear.forward:
        raise UserError(f"{type(unwrap(model)).__name__}: the output head is a {type(head).__name__}, not a plain "
                        "linear layer (LoRA on lm_head?); the chunked loss needs a plain head: leave lm_head out "
                        "of --lora-target-modules")
    return head


@contextlib.contextmanager
def _head_forward(model, compute):
    """Within the block, `head(hidden)` returns compute(head, hidden, transform)."""
    head = output_head(model)
    config = unwrap(model).config
    transform, switched = None, {}
    for name, (off, make) in LOGIT_TRANSFORMS.items():
        value = getattr(config, name, None)
        if value != off:
            switched[name] = value
            setattr(config, name, off)
            transform = make(value)
    previous = head.__dict__.get("forward")
    head.forward = lambda hidden: compute(head, hidden, transform)
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous
        for name, value in switched.items():
            setattr(config, name, value)


def _require_unchanged(model, returned: torch.Tensor, sent: float) -> None:
    if returned.numel() != 1 or float(returned.detach().reshape(-1)[0]) != sent:
        raise UserError(f"{type(unwrap(model)).__name__} changes the logits after its output head in a way "
                        "distill's chunked loss does not know (only final_logit_softcapping is handled); "
                        "this architecture cannot be trained here")


def _trained_hidden(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.reshape(-1, hidden.shape[-1])


def head_of(module: torch.nn.Linear, transform) -> Head:
    from .losses import identity
    return Head(module.weight, module.bias, transform or identity)


def hidden_and_head(model, inputs: dict, trained: torch.Tensor) -> tuple[torch.Tensor, Head]:
    """The model's final hidden states at the trained positions [N, H] and its head, without
    gradients (a KD teacher's side, or the student's own log-probs for an on-policy advantage)."""
    captured = {}

    def capture(module, hidden, transform):
        captured["hidden"], captured["head"] = _trained_hidden(hidden), head_of(module, transform)
        return hidden.new_ones((1,), dtype=torch.float32)

    with torch.no_grad(), _head_forward(model, capture):
        out = model(**inputs, use_cache=False, logits_to_keep=trained)
    _require_unchanged(model, out.logits, 1.0)
    return captured["hidden"], captured["head"]


def loss_from_model(model, inputs: dict, trained: torch.Tensor, spec: LossSpec):
    """(total, CE, KD or None, the model's router aux loss or None) of the trained positions, total
    differentiable through the model."""
    parts = {}

    def compute(module, hidden, transform):
        total, parts["ce"], parts["kd"] = head_loss(_trained_hidden(hidden), head_of(module, transform), spec)
        parts["total"] = float(total.detach())
        return total

    with _head_forward(model, compute):
        out = model(**inputs, use_cache=False, logits_to_keep=trained)
    total = out.logits.reshape(())  # the value as it came back through the wrappers' hooks
    _require_unchanged(model, out.logits, parts["total"])
    return total, parts["ce"], parts["kd"], getattr(out, "aux_loss", None)
