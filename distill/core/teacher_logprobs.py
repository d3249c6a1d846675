"""Stored teacher log-probs (`distill generate --logprobs K`): for every token a teacher sampled,
its id and log-prob and the teacher's top-K ids and log-probs, kept with the trace so that
`distill train --method kd` can distil from them later with no teacher loaded (DistillKit's and
axolotl's offline KD, from any teacher: local or an OpenAI-compatible server).

The one home of their format:
- in samples.jsonl, a sample's `teacher_logprobs` is {k, token_ids, token_logprob, topk_ids,
  topk_logprobs}, each array base64 of little-endian int32 (ids) or float16 (log-probs), the top-K
  ones row-major [tokens, K]; a server that returned fewer than K alternatives at a position pads
  it with id -1 and log-prob -inf;
- in OUT/traces, the columns `teacher_token_ids` (list of int32), `teacher_token_logprob`
  (list of float16), `teacher_topk_ids` and `teacher_topk_logprobs` (lists of K-long lists), and
  `teacher_logprobs.json` beside the arrow file: K and the teacher's token ids of a fixed probe text,
  which is how train tells whether the ids are in the student's vocabulary.
Stored, a token costs 4 + 2 bytes plus K x (4 + 2) bytes (126 bytes at K = 20), plus arrow's
list offsets."""

from __future__ import annotations

import base64
import difflib
from dataclasses import dataclass

import numpy as np

COLUMNS = ("teacher_token_ids", "teacher_token_logprob", "teacher_topk_ids", "teacher_topk_logprobs")
META_FILE = "teacher_logprobs.json"
# The text whose tokenization names the teacher's vocabulary (digits, whitespace runs, unicode, the
# think tags): two tokenizers that give it the same ids are taken to share their vocabulary.
PROBE = ("Probe: Ava has 12 apples and gets 7 more.  Tabs\tand ünïcödé too? 123456789 <think>\n"
         "12 + 7 = 19\n</think>\n\nThe answer is \\boxed{19}.")


def bytes_per_token(k: int) -> int:
    return 4 + 2 + k * (4 + 2)


@dataclass
class TokenLogprobs:
    """One sample's teacher log-probs: [T] ids and log-probs of the sampled tokens, [T, K] top-K."""
    token_ids: np.ndarray
    token_logprob: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray

    @property
    def k(self) -> int:
        return int(self.topk_ids.shape[1]) if self.topk_ids.ndim == 2 else 0

    @classmethod
    def from_lists(cls, token_ids, token_logprob, topk_ids, topk_logprobs, k: int) -> "TokenLogprobs":
        """From per-token lists; top-K rows shorter than K are padded (id -1, log-prob -inf)."""
        rows = len(token_ids)
        ids = np.full((rows, k), -1, dtype=np.int32)
        lps = np.full((rows, k), -np.inf, dtype=np.float16)
        for i, (row_ids, row_lps) in enumerate(zip(topk_ids, topk_logprobs)):
            n = min(k, len(row_ids))
            ids[i, :n], lps[i, :n] = row_ids[:n], row_lps[:n]
        return cls(np.asarray(token_ids, dtype=np.int32), np.asarray(token_logprob, dtype=np.float16), ids, lps)

    def pack(self) -> dict:
        """The samples.jsonl form."""
        enc = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")  # noqa: E731
        return {"k": self.k, "token_ids": enc(self.token_ids.astype("<i4")),
                "token_logprob": enc(self.token_logprob.astype("<f2")),
                "topk_ids": enc(self.topk_ids.astype("<i4")), "topk_logprobs": enc(self.topk_logprobs.astype("<f2"))}

    @classmethod
    def unpack(cls, packed: dict) -> "TokenLogprobs":
        k = int(packed["k"])
        dec = lambda s, t: np.frombuffer(base64.b64decode(s), dtype=t)  # noqa: E731
        ids = dec(packed["token_ids"], "<i4")
        return cls(ids, dec(packed["token_logprob"], "<f2"), dec(packed["topk_ids"], "<i4").reshape(len(ids), k),
                   dec(packed["topk_logprobs"], "<f2").reshape(len(ids), k))

    def columns(self) -> dict:
        """The OUT/traces columns of this sample."""
        return {"teacher_token_ids": self.token_ids.tolist(),
                "teacher_token_logprob": self.token_logprob.astype(np.float32).tolist(),
                "teacher_topk_ids": self.topk_ids.tolist(),
                "teacher_topk_logprobs": self.topk_logprobs.astype(np.float32).tolist()}

    @classmethod
    def from_columns(cls, row: dict) -> "TokenLogprobs":
        ids = np.asarray(row["teacher_topk_ids"], dtype=np.int32)
        return cls(np.asarray(row["teacher_token_ids"], dtype=np.int32),
                   np.asarray(row["teacher_token_logprob"], dtype=np.float16),
                   ids.reshape(len(row["teacher_token_ids"]), -1),
                   np.asarray(row["teacher_topk_logprobs"], dtype=np.float16).reshape(ids.shape[0], -1))


def features() -> dict:
    from datasets import Sequence, Value
    return {"teacher_token_ids": Sequence(Value("int32")), "teacher_token_logprob": Sequence(Value("float16")),
            "teacher_topk_ids": Sequence(Sequence(Value("int32"))),
            "teacher_topk_logprobs": Sequence(Sequence(Value("float16")))}


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(ids, log-probs) of the k most likely tokens of one row of logits, most likely first, and
    the row's log-normalizer (log-probs of other tokens are logits minus it)."""
    row = logits.astype(np.float32, copy=False)
    peak = float(row.max())
    norm = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
    k = min(k, row.shape[0])
    ids = np.argpartition(-row, k - 1)[:k]
    ids = ids[np.argsort(-row[ids], kind="stable")]
    return ids.astype(np.int32), (row[ids] - norm).astype(np.float32), norm


def align(stored_ids: list[int] | np.ndarray, train_ids: list[int] | np.ndarray) -> list[tuple[int, int]]:
    """(training position, stored position) of every token where the training encoding of a trace
    equals the ids the teacher sampled, in order: the matching runs of the two id sequences (the
    reasoning and answer are re-rendered for training, so whitespace and tags may differ)."""
    matcher = difflib.SequenceMatcher(None, list(map(int, stored_ids)), list(map(int, train_ids)), autojunk=False)
    return [(b + i, a + i) for a, b, n in matcher.get_matching_blocks() for i in range(n)]


def at_positions(stored: TokenLogprobs, completion_ids: list[int]) -> dict:
    """The stored top-K at each trained position of a trace whose training completion is
    `completion_ids` (position j predicts completion_ids[j]): stored_ids [C, K], stored_logprobs [C, K]
    and stored_mask [C], the mask true where the training encoding equals the sampled id."""
    n, k = len(completion_ids), stored.k
    out = {"stored_ids": np.full((n, k), -1, dtype=np.int32),  # compact: widened per batch
           "stored_logprobs": np.full((n, k), -np.inf, dtype=np.float16), "stored_mask": np.zeros(n, dtype=bool)}
    for j, i in align(stored.token_ids, completion_ids):
        out["stored_ids"][j], out["stored_logprobs"][j], out["stored_mask"][j] = \
            stored.topk_ids[i], stored.topk_logprobs[i], True
    return out
