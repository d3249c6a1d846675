"""Batches of tokenized traces, padded or packed, and the held-out split.

Every batch carries `labels` (IGNORE on prompt tokens) and `shift_labels`, the next-token target
of each position computed per sample, so a packed row never asks one sample's last token to
predict the next sample's first token. The Trainer counts `shift_labels` to average the loss
over trained tokens across gradient accumulation and devices."""

from __future__ import annotations

import random
from collections import Counter

import torch

from .chat_format import IGNORE


class TraceDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]

    def tokens(self) -> int:
        return sum(len(s["input_ids"]) for s in self.samples)


def split_heldout(samples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole problems (the traces of one problem stay on one side), about `fraction`
    of the traces, never all of them."""
    per_problem = Counter(s["problem"] for s in samples)
    problems = sorted(per_problem)
    if fraction <= 0 or len(problems) < 2:
        return samples, []
    random.Random(seed).shuffle(problems)
    wanted = max(1, round(fraction * len(samples)))
    held, count = set(), 0
    for problem in problems[:-1]:
        if count >= wanted:
            break
        held.add(problem)
        count += per_problem[problem]
    train = [s for s in samples if s["problem"] not in held]
    heldout = [s for s in samples if s["problem"] in held]
    return train, heldout


class PaddedBatches:
    """Right-padded rows with an attention mask."""

    packed = False

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        targets = torch.full((len(features), width), IGNORE, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor(f["labels"])
            targets[row, :n] = torch.tensor(f["targets"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "shift_labels": targets}


class PackedBatches:
    """All samples of the batch in one row without padding; position ids restart at 0 for each
    sample, which is how the attention kernels tell the samples apart (see attention.py)."""

    packed = True

    def __call__(self, features: list[dict]) -> dict:
        ids, positions, labels, targets = [], [], [], []
        for f in features:
            ids += f["input_ids"]
            positions += range(len(f["input_ids"]))
            labels += f["labels"]
            targets += f["targets"]
        as_row = lambda values: torch.tensor(values, dtype=torch.long).unsqueeze(0)  # noqa: E731
        return {"input_ids": as_row(ids), "position_ids": as_row(positions), "labels": as_row(labels),
                "shift_labels": as_row(targets)}


def count_tokens(batch: dict) -> tuple[int, int]:
    """(real tokens, positions computed) of one batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    n = batch["input_ids"].numel()
    return n, n
