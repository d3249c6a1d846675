"""Packing without cross-sample attention: a packed row gives each sample the logits it gets
alone, and the packed loss (and its gradients) equal the padded loss on the same samples."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.train import attention
from distill.train.attention import PACKED_ATTENTION
from distill.core.traces import split_heldout
from distill.train.batching import PackedBatches, PaddedBatches, count_tokens
from distill.core.traces import encode_traces, end_of_turn, targets_of
from distill.train.trainer import loss_sums

from .helpers import PROBLEMS


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _samples(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    eot = end_of_turn(tok, "test")
    rows = [{"problem": q, "prompt": q, "reasoning": r, "answer": f"\\boxed{{{a}}}"} for q, r, a in PROBLEMS]
    samples, _ = encode_traces(tok, rows, eot, 4096, "test")
    return tok, samples


WINDOW = {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}


@pytest.mark.parametrize("arch,strategy,overrides", [
    ("qwen2", "each", {}), ("qwen3", "each", {}), ("llama", "each", {}), ("qwen2", "gathered", {}),
    ("qwen2", "each", WINDOW), ("qwen2", "gathered", WINDOW)])
def test_a_packed_row_gives_each_sample_its_own_logits(tiny_model, arch, strategy, overrides, monkeypatch):
    if strategy == "gathered":  # the GPU strategy, run on the CPU
        monkeypatch.setattr(attention, "GATHER_ON", ("cpu",))
    model_dir = tiny_model(arch, **overrides)
    _, samples = _samples(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    alone = [model(input_ids=torch.tensor([s["input_ids"].tolist()]), use_cache=False).logits[0] for s in samples]
    packed = PackedBatches()(samples)
    model.set_attn_implementation(PACKED_ATTENTION)
    together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
    assert together.shape[0] == sum(len(s["input_ids"]) for s in samples)
    torch.testing.assert_close(together, torch.cat(alone), atol=2e-5, rtol=1e-4)


def test_packed_loss_and_gradients_equal_the_padded_ones(tiny_model):
    model_dir = tiny_model("qwen2")
    tok, samples = _samples(model_dir)
    padded_batch, packed_batch = PaddedBatches(tok.pad_token_id)(samples), PackedBatches()(samples)
    real, positions = count_tokens(padded_batch)
    assert real == sum(len(s["input_ids"]) for s in samples) < positions   # the lengths differ: padding
    assert count_tokens(packed_batch) == (real, real)                        # packed: none

    results = []
    for batch, attention in ((padded_batch, "sdpa"), (packed_batch, PACKED_ATTENTION)):
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
        total, _, _, count = loss_sums(model, batch)
        (total / count).backward()
        results.append((total / count, count, model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (padded_loss, padded_count, padded_grad), (packed_loss, packed_count, packed_grad) = results
    assert padded_count == packed_count == sum(int((targets_of(s) != -100).sum()) for s in samples)
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_grad, padded_grad, atol=1e-5, rtol=1e-4)


def test_the_heldout_split_keeps_problems_whole():
    samples = [{"problem": f"p{i % 10}", "input_ids": [1]} for i in range(40)]
    train, heldout = split_heldout(samples, 0.1, seed=3)
    assert len(train) + len(heldout) == 40 and 0 < len(heldout) < 40
    assert not {s["problem"] for s in train} & {s["problem"] for s in heldout}
    assert split_heldout(samples, 0.0, seed=3) == (samples, [])


def test_a_packed_model_generates_a_left_padded_batch_as_sdpa_does(tiny_model):
    """A model switched to packed attention for training also samples (on-policy rollouts, the
    demo builds' measurements): a left-padded batch with a KV cache must give what sdpa gives.
    The padding mask's self-visible diagonal once sat at the cache's first key, a pad."""
    model_dir = tiny_model("qwen2")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    enc = tok(["1 + 2 =", "a much longer prompt: 17 - 5 + 3 ="], return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()
    outputs = []
    for kind in ("sdpa", PACKED_ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
        model.set_attn_implementation(kind)
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=12, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        outputs.append((out.sequences, torch.stack(out.scores)))
    assert torch.equal(outputs[0][0], outputs[1][0])
    torch.testing.assert_close(outputs[0][1], outputs[1][1], atol=1e-4, rtol=1e-4)
