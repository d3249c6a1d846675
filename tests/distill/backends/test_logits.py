"""The helpers export validation and eval fidelity share: end-of-sequence ids from the configs
a model folder carries, and KL / top-1 agreement / log-probabilities checked against torch's
own KL divergence and log-softmax (the positions are taken in chunks, so across chunk edges)."""

from __future__ import annotations

import numpy as np
import pytest

from distill.backends import logits as L


class _Named:
    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


def test_eos_ids_take_the_first_config_that_names_one_then_the_tokenizer():
    assert L.eos_ids(_Named([7, 3]), _Named(9), tokenizer=_Named(3)) == [7, 3]
    assert L.eos_ids(_Named(None), _Named(9), tokenizer=_Named(4)) == [9, 4]
    assert L.eos_ids(None, {"eos_token_id": [5, 6]}) == [5, 6]          # genai_config's "model"
    assert L.eos_ids(None, tokenizer=_Named(2)) == [2]
    assert L.eos_ids(_Named(None), tokenizer=_Named(None)) == []


def test_eos_ids_of_a_real_model_folder(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = L.eos_ids(GenerationConfig.from_pretrained(smollm2_dir), AutoConfig.from_pretrained(smollm2_dir),
                    tokenizer=tok)
    assert tok.eos_token_id in ids and len(ids) == len(set(ids))


@pytest.mark.parametrize("positions", [1, L.ROWS_AT_ONCE, L.ROWS_AT_ONCE * 2 + 5])
def test_kl_top1_and_logprobs_agree_with_torch(positions):
    import torch
    rng = np.random.default_rng(positions)
    ref = rng.normal(size=(positions, 300)).astype(np.float32) * 3
    other = (ref + rng.normal(size=ref.shape) * 0.5).astype(np.float32)
    other = np.concatenate([other, rng.normal(size=(positions, 20)).astype(np.float32)], axis=1)  # larger vocab
    targets = rng.integers(0, 300, size=positions).tolist()
    p = torch.log_softmax(torch.from_numpy(ref).double(), -1)
    q = torch.log_softmax(torch.from_numpy(other[:, :300]).double(), -1)
    want_kl = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1).numpy()
    stats = L.compare_positions(ref, other, targets)
    np.testing.assert_allclose(stats["kl"], want_kl, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(stats["top1"], ref.argmax(-1) == other[:, :300].argmax(-1))
    np.testing.assert_allclose(stats["logprob"], q.numpy()[np.arange(positions), targets], rtol=1e-9)
    np.testing.assert_allclose(L.token_logprobs(ref, targets), p.numpy()[np.arange(positions), targets], rtol=1e-9)
    kl, top1 = L.kl_and_top1(ref, other)
    assert kl == pytest.approx(float(want_kl.mean())) and top1 == pytest.approx(float(stats["top1"].mean()))
    assert L.kl_and_top1(ref, ref) == (pytest.approx(0.0, abs=1e-12), 1.0)
