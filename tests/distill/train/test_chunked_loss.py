"""The chunked loss (trainer.loss_sums through head.py and losses.HeadLoss) gives the same losses
and the same gradients as the full computation it replaced, kept here only as the reference:
every trained position projected onto the whole vocabulary at once by the model's own forward."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from distill.core.errors import UserError
from distill.train import losses
from distill.core.traces import IGNORE
from distill.train.losses import cross_entropy_sum, distillation_sum
from distill.train.trainer import loss_sums


def full_loss_sums(model, batch, teacher=None, kd=(0.5, 1.0, "forward_kl")):
    """The loss as distill computed it before chunking (model logits of all trained positions)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels", "token_weights")}
    trained = batch["shift_labels"].ne(IGNORE)
    wanted = batch["shift_labels"][trained]
    logits = model(**inputs, use_cache=False, logits_to_keep=trained).logits
    logits = logits.reshape(-1, logits.shape[-1])
    weights = batch.get("token_weights")
    if teacher is None:
        return cross_entropy_sum(logits, wanted, weights), None, None, int(wanted.numel())
    with torch.no_grad():
        teacher_logits = teacher(**inputs, use_cache=False, logits_to_keep=trained).logits
    alpha, temperature, kind = kd
    total, ce, div = distillation_sum(logits, teacher_logits.reshape(-1, teacher_logits.shape[-1]), wanted,
                                      alpha, temperature, kind, weights)
    return total, ce, div, int(wanted.numel())


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """A few rows per chunk, so that every test crosses chunk boundaries."""
    monkeypatch.setattr(losses, "CHUNK_LOGITS", 5000)  # 9 rows of the 508-token demo vocabulary


def _packed_batch(vocab: int, lengths=(23, 17, 30), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    ids = torch.randint(0, vocab, (1, total), generator=g)
    targets = torch.randint(0, vocab, (1, total), generator=g)
    targets[torch.rand(1, total, generator=g) < 0.3] = IGNORE  # prompt and sample-end positions
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return {"input_ids": ids, "position_ids": positions, "labels": targets.clone(), "shift_labels": targets}


def _padded_batch(vocab: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 20), generator=g)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 13:] = 0
    targets = torch.randint(0, vocab, (2, 20), generator=g)
    targets[:, :5] = IGNORE
    targets[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": targets.clone(), "shift_labels": targets}


def _model(folder, seed: int = 0, **changes):
    """A random model of the folder's config with some settings changed (untied head, width)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(folder)
    for name, value in changes.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, batch, teacher=None, kd=(0.5, 1.0, "forward_kl")):
    results = []
    for fn in (full_loss_sums, loss_sums):
        model.zero_grad(set_to_none=True)
        total, ce, div, n = fn(model, batch, teacher, kd)
        (total / n).backward()
        results.append((total.detach(), ce, div, n, _grads(model)))
    (want, want_ce, want_div, want_n, want_g), (got, got_ce, got_div, got_n, got_g) = results
    assert got_n == want_n > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    if teacher is not None:
        torch.testing.assert_close(got_ce, want_ce.detach(), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got_div, want_div.detach(), rtol=1e-5, atol=1e-4)
    else:
        assert got_ce is None and got_div is None
    assert set(got_g) == set(want_g) and want_g
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("make_batch", [_packed_batch, _padded_batch])
def test_cross_entropy_and_gradients_match_the_full_computation(tiny_model, tied, make_batch, one_torch_thread):
    model = _model(tiny_model("qwen2"), tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    _compare(model, make_batch(model.config.vocab_size))


def test_token_weights_multiply_each_cross_entropy_term(tiny_model, one_torch_thread):
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen2"))
    batch = _packed_batch(model.config.vocab_size)
    n = int(batch["shift_labels"].ne(IGNORE).sum())
    batch["token_weights"] = torch.linspace(-1.5, 2.0, n)  # advantages may be negative
    _compare(model, batch)
    # and the weights really act: all-ones equals no weights, zeros give no loss
    plain = loss_sums(model, {k: v for k, v in batch.items() if k != "token_weights"})[0]
    ones = loss_sums(model, {**batch, "token_weights": torch.ones(n)})[0]
    zeros = loss_sums(model, {**batch, "token_weights": torch.zeros(n)})[0]
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6) and zeros.item() == 0.0
    with pytest.raises(ValueError, match="token_weights"):
        loss_sums(model, {**batch, "token_weights": torch.ones(n + 1)})


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("alpha,temperature", [(0.5, 1.0), (0.2, 2.0)])
def test_distillation_matches_the_full_computation(tiny_model, kind, alpha, temperature, one_torch_thread):
    student = AutoModelForCausalLM.from_pretrained(tiny_model("qwen2"))
    # The teacher pads its embedding matrix past the tokenizer and has another width and head.
    teacher = _model(tiny_model("qwen2"), seed=3, hidden_size=96, vocab_size=student.config.vocab_size + 13,
                     tie_word_embeddings=False).eval()
    batch = _packed_batch(student.config.vocab_size)
    n = int(batch["shift_labels"].ne(IGNORE).sum())
    _compare(student, batch, teacher, (alpha, temperature, kind))
    _compare(student, {**batch, "token_weights": torch.rand(n, generator=torch.Generator().manual_seed(0))},
             teacher, (alpha, temperature, kind))


def test_lora_gradients_match(tiny_model, one_torch_thread):
    from distill.train.models import add_lora
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model("qwen3")), 4, 8, 0.0, ["all-linear"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3", seed=5)).eval()
    batch = _packed_batch(model.config.vocab_size)
    _compare(model, batch)
    _compare(model, batch, teacher, (0.5, 1.5, "jsd"))


def test_eval_without_gradients_gives_the_same_loss(tiny_model, one_torch_thread):
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen2"))
    batch = _padded_batch(model.config.vocab_size)
    with torch.no_grad():
        want = full_loss_sums(model, batch)[0]
        got = loss_sums(model, batch)[0]
    assert not got.requires_grad and got.item() == pytest.approx(want.item(), rel=1e-5)


def test_final_logit_softcapping_is_applied_per_chunk(tmp_path, one_torch_thread):
    from transformers import Gemma2Config
    config = Gemma2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0,
                          attn_implementation="eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    torch.nn.init.normal_(model.lm_head.weight, std=2.0)  # logits large enough for the cap to bite
    _compare(model, _padded_batch(300))
    assert model.config.final_logit_softcapping == 3.0  # switched back on after the call


def test_an_unknown_logit_transform_is_refused(tiny_model, one_torch_thread):
    from transformers import CohereConfig
    config = CohereConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, logit_scale=0.5)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UserError, match="changes the logits after its output head"):
        loss_sums(model, _padded_batch(300))
    assert "forward" not in model.lm_head.__dict__  # the head is restored after a failure too


def test_a_head_that_is_not_a_plain_linear_layer_is_refused(tiny_model, one_torch_thread):
    from distill.train.models import add_lora
    model = add_lora(_model(tiny_model("qwen2"), tie_word_embeddings=False), 4, 8, 0.0, ["q_proj", "lm_head"])
    with pytest.raises(UserError, match="plain linear layer"):
        loss_sums(model, _padded_batch(model.config.vocab_size))


def test_an_moe_student_with_router_logits_on_adds_transformers_load_balancing_loss(tiny_model):
    """With config.output_router_logits (off by default, as in transformers), the loss of an MoE
    student is transformers' own: the mean CE plus router_aux_loss_coef times the load-balancing loss."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3_moe"), dtype=torch.float32)
    model.config.output_router_logits, model.router_aux_loss_coef = True, 0.5
    batch = _padded_batch(model.config.vocab_size)
    batch["shift_labels"][:, -1] = IGNORE
    labels = torch.full_like(batch["shift_labels"], IGNORE)  # what transformers shifts into shift_labels
    labels[:, 1:] = batch["shift_labels"][:, :-1]
    total, _, _, n = loss_sums(model, batch)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}
    out = model(**inputs, labels=labels, output_router_logits=True)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert (total / n).item() == pytest.approx(out.loss.item(), rel=1e-5)
    model.config.output_router_logits = False
    assert (loss_sums(model, batch)[0] / n).item() == pytest.approx(out.loss.item() - 0.5 * out.aux_loss.item(),
                                                                   rel=1e-5)
