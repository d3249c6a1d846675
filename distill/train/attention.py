"""Attention for packed rows on any device: each sample attends only to itself.

transformers can run packed rows through `sdpa` with a block-diagonal mask, but that computes the
whole row-by-row score matrix (a batch of 16 traces of 150 tokens costs a 2400 x 2400 matrix
per head and layer) and measured twice as slow as padding on a CPU. Here each sample is attended
on its own with `is_causal=True`: on a CPU one call per sample (slices, no copies); on a GPU,
where calls cost more than copies, the samples are gathered into one small padded batch and
scattered back. Attention costs what the samples alone cost, and the linear layers see no padding.

Registered with transformers' AttentionInterface as `packed_sdpa`, with a mask function that
builds sdpa's mask for a padded batch and none for a packed row (the position ids carry the
sample boundaries)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_ATTENTION = "packed_sdpa"
GATHER_ON = ("cuda", "xpu", "mps")  # devices where one padded call beats a call per sample
_last_layout: list = [None, None]  # (position_ids tensor, its layout): shared by all layers of a forward


def _layout(position_ids: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Sample lengths, and gather indices [samples, longest] into the row with which are real."""
    if _last_layout[0] is position_ids:
        return _last_layout[1]
    pos = position_ids.reshape(-1)
    total = pos.shape[0]
    restarts = torch.ones_like(pos, dtype=torch.bool)
    restarts[1:] = pos[1:] != pos[:-1] + 1
    starts = torch.nonzero(restarts).flatten()
    lengths = torch.diff(starts, append=starts.new_tensor([total]))
    offsets = torch.arange(int(lengths.max()), device=pos.device)
    real = offsets[None, :] < lengths[:, None]
    index = torch.where(real, starts[:, None] + offsets[None, :], 0)
    layout = (lengths.tolist(), index, real)
    _last_layout[:] = [position_ids, layout]
    return layout


def _window_mask(length: int, window: int | None, device) -> torch.Tensor | None:
    if window is None or length <= window:
        return None
    i = torch.arange(length, device=device)
    return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        sliding_window=None, position_ids=None, **kwargs):
    if position_ids is None or attention_mask is not None or query.shape[0] != 1 or query.shape[2] == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError("packed_sdpa does not support attention logit soft-capping")
    lengths, index, real = _layout(position_ids)
    gqa = query.shape[1] != key.shape[1]
    if query.device.type not in GATHER_ON:
        # On a CPU one attention call per sample is the cheapest: no copies, no padding.
        outputs, start = [], 0
        for n in lengths:
            mask = _window_mask(n, sliding_window, query.device)
            outputs.append(F.scaled_dot_product_attention(
                query[:, :, start:start + n], key[:, :, start:start + n], value[:, :, start:start + n],
                attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None, enable_gqa=gqa))
            start += n
        return torch.cat(outputs, dim=2).transpose(1, 2), None
    # On a GPU one call for all samples: [1, heads, row, dim] -> [samples, heads, longest, dim]
    q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))
    mask = _window_mask(q.shape[2], sliding_window, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         is_causal=mask is None, enable_gqa=gqa)
    # [samples, heads, longest, dim] -> [1, row, heads, dim], the layout attention functions return
    return out.transpose(1, 2)[real].unsqueeze(0), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """A padded batch (a 2D padding mask: sampling, scoring) gets sdpa's mask; a packed row (no
    padding mask: the position ids carry the sample boundaries) gets none, which keeps it on the
    per-sample path above. Without a mask function of its own the kernel got no mask at all, and
    a left-padded batch attended to its pads."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_forward)
AttentionMaskInterface.register(PACKED_ATTENTION, packed_sdpa_mask)


def use_packed_attention(model, requested: str | None) -> None:
    """Switch `model` to a kernel that keeps the samples of a packed row apart: flash attention
    does natively; anything else goes through packed_sdpa."""
    from distill.core.errors import UserError
    current = requested or model.config._attn_implementation
    wanted = current if current and current.startswith("flash_attention") else PACKED_ATTENTION
    model.set_attn_implementation(wanted)
    if model.config._attn_implementation != wanted:
        raise UserError(f"packing: {type(model).__name__} cannot switch its attention kernel, so packed "
                        "samples would attend to each other; train with --no-packing")
