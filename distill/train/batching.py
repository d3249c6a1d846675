"""Batches of tokenized traces, padded or packed, and the held-out split.

Every batch carries `labels` (IGNORE on prompt tokens) and `shift_labels`, the next-token target
of each position computed per sample, so a packed row never asks one sample's last token to
predict the next sample's first token. The Trainer counts `shift_labels` to average the loss
over trained tokens across gradient accumulation and devices."""

from __future__ import annotations

import numpy as np
import torch

from distill.core.traces import IGNORE, labels_of, targets_of


class TraceDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


class PaddedBatches:
    """Right-padded rows with an attention mask."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = np.full((len(features), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(features), width), dtype=np.int64)
        labels = np.full((len(features), width), IGNORE, dtype=np.int64)
        targets = np.full((len(features), width), IGNORE, dtype=np.int64)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = f["input_ids"]
            mask[row, :n] = 1
            labels[row, :n] = labels_of(f)
            targets[row, :n] = targets_of(f)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels), "shift_labels": torch.from_numpy(targets),
                **per_position(features)}


class PackedBatches:
    """All samples of the batch in one row without padding; position ids restart at 0 for each
    sample, which is how the attention kernels tell the samples apart (see attention.py)."""

    def __call__(self, features: list[dict]) -> dict:
        def row(parts) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(parts).astype(np.int64)).unsqueeze(0)
        return {"input_ids": row([f["input_ids"] for f in features]),
                "position_ids": row([np.arange(len(f["input_ids"])) for f in features]),
                "labels": row([labels_of(f) for f in features]),
                "shift_labels": row([targets_of(f) for f in features]), **per_position(features)}


def per_position(features: list[dict]) -> dict:
    """What samples carry for each of their trained positions (`position_data`: name -> array
    whose first axis is the sample's completion tokens, which are its trained positions in order),
    concatenated in the order of the batch's `shift_labels[trained]`. A `span` array numbers spans
    within its sample; here the numbers are made unique across the batch."""
    if not features or "position_data" not in features[0]:
        return {}
    out = {}
    for name in features[0]["position_data"]:
        parts, offset = [], 0
        for f in features:
            part = np.asarray(f["position_data"][name])
            if name == "span":
                part = part + offset
                offset = int(part.max()) + 1 if len(part) else offset
            parts.append(part)
        joined = np.concatenate(parts)
        if joined.dtype == np.float16:  # kept compact per sample, computed with in fp32
            joined = joined.astype(np.float32)
        elif joined.dtype.kind == "i":
            joined = joined.astype(np.int64)
        out[name] = torch.from_numpy(joined)
    return out


def count_tokens(batch: dict) -> tuple[int, int]:
    """(real tokens, positions computed) of one batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    n = batch["input_ids"].numel()
    return n, n
