"""The transformers backend on tiny random MoE teachers: batched generation with left padding
gives what one-at-a-time generation gives, n samples per prompt, end-of-turn and token-limit
finish reasons, stop strings, timings, and clear errors for what is not a model."""

from __future__ import annotations

import pytest

from distill.core.errors import UserError
from distill.backends import Sampling, load_backend

QUESTIONS = ["What is 2 + 2?", "Ava has 12 apples and gives away 5. Then she doubles them. How many now?",
             "Hi", "Tom has 3 bags of 4 marbles and finds 7 more marbles on the way home from school."]


@pytest.fixture(scope="module")
def moe(tiny_model):
    backend = load_backend(f"hf:{tiny_model('qwen3_moe')}", batch_size=4)
    yield backend
    backend.close()


def test_render_uses_the_chat_template_and_opens_the_think_block(moe):
    text = moe.render("What is 2 + 2?")
    assert text == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_batched_greedy_equals_one_prompt_at_a_time(moe):
    prompts = [moe.render(q) for q in QUESTIONS]
    greedy = Sampling(n=1, max_new_tokens=12, temperature=0.0)
    batched = moe.generate(prompts, greedy)
    single = [moe.generate([p], greedy)[0] for p in prompts]
    assert [b[0].text for b in batched] == [s[0].text for s in single]
    assert [b[0].prompt_tokens for b in batched] == [moe.count_tokens(p) for p in prompts]
    assert len({b[0].prompt_tokens for b in batched}) == len(prompts)   # padding really happened


def test_n_samples_finish_reasons_and_timings(moe):
    prompts = [moe.render(q) for q in QUESTIONS[:3]]
    done = []
    out = moe.generate(prompts, Sampling(n=3, max_new_tokens=6, temperature=1.0, top_p=0.95, seed=1),
                       on_done=lambda i, c: done.append((i, len(c))))
    assert sorted(done) == [(0, 3), (1, 3), (2, 3)]
    for completions in out:
        assert len(completions) == 3 and len({c.text for c in completions}) > 1  # sampled, not copied
        for c in completions:
            # a random model may sample the end-of-turn token; then the sample is shorter
            assert (c.finish_reason == "length") == (c.completion_tokens == 6), c
            assert c.ttft_s > 0 and c.decode_s >= 0
    assert sum(c.finish_reason == "length" for cs in out for c in cs) >= 5
    again = moe.generate(prompts, Sampling(n=3, max_new_tokens=6, temperature=1.0, top_p=0.95, seed=1))
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in out]
    greedy = moe.generate(prompts[:1], Sampling(n=3, max_new_tokens=6, temperature=0.0))[0]
    assert len({c.text for c in greedy}) == 1


def test_stops_at_the_end_of_turn_token_and_at_stop_strings(moe):
    prompt = moe.render(QUESTIONS[1])
    free = moe.generate([prompt], Sampling(max_new_tokens=10))[0][0]
    tokens = moe.tokenizer(free.text, add_special_tokens=False)["input_ids"]
    original = moe.eos_ids
    moe.eos_ids = [tokens[4]]     # pretend the fifth generated token ends the turn
    try:
        stopped = moe.generate([prompt], Sampling(max_new_tokens=10))[0][0]
    finally:
        moe.eos_ids = original
    assert stopped.finish_reason == "stop" and stopped.completion_tokens == tokens.index(tokens[4])
    assert free.text.startswith(stopped.text)
    sampled = Sampling(max_new_tokens=12, temperature=1.0, seed=5)
    free = moe.generate([prompt], sampled)[0][0]
    stop = free.text[len(free.text) // 2:][:3]
    sampled.stop = [stop]
    cut = moe.generate([prompt], sampled)[0][0]
    assert cut.finish_reason == "stop" and cut.text == free.text[:free.text.find(stop)]
    assert cut.completion_tokens < free.completion_tokens


@pytest.fixture(scope="module")
def lively(tiny_model):
    """A tiny MoE with larger random weights, whose greedy text depends on the prompt (the
    default initialisation echoes the last prompt token whatever the prompt)."""
    backend = load_backend(f"hf:{tiny_model('qwen3_moe', initializer_range=0.4)}", batch_size=4)
    yield backend
    backend.close()


def test_finished_rows_make_room_for_waiting_prompts(lively):
    """Rows that end early leave the batch and waiting prompts join the running ones (their
    cache left-padded to the batch's): the text is still what one prompt at a time gives, and a
    sampled row draws the same tokens whatever batch it sits in."""
    moe = lively
    prompts = [moe.render(q) for q in QUESTIONS + ["One more, a little longer than most of the others?"]]
    greedy = Sampling(max_new_tokens=10)
    free = [moe.generate([p], greedy)[0][0] for p in prompts]
    original, size = moe.eos_ids, moe.batch_size
    # end the turn at the token whose first appearance varies most between rows
    first = lambda t, ids: ids.index(t) if t in ids else None  # noqa: E731
    moe.eos_ids = [max({t for f in free for t in f.token_ids},
                       key=lambda t: (len({first(t, f.token_ids) for f in free}), -t))]
    try:
        single = [moe.generate([p], greedy)[0][0] for p in prompts]
        moe.batch_size = 2
        batched = moe.generate(prompts, greedy)
        sampled = Sampling(n=2, max_new_tokens=8, temperature=1.0, seed=3)
        narrow = moe.generate(prompts, sampled)
        moe.batch_size = 16
        wide = moe.generate(prompts, sampled)
    finally:
        moe.eos_ids, moe.batch_size = original, size
    assert len({s.completion_tokens for s in single}) > 1          # rows really ended apart
    assert [b[0].token_ids for b in batched] == [s.token_ids for s in single]
    assert [b[0].finish_reason for b in batched] == [s.finish_reason for s in single]
    assert [[c.token_ids for c in cs] for cs in narrow] == [[c.token_ids for c in cs] for cs in wide]


def test_qwen2_moe_teacher(tiny_model):
    backend = load_backend(f"hf:{tiny_model('qwen2_moe')}", batch_size=2)
    out = backend.generate([backend.render(q) for q in QUESTIONS[:2]], Sampling(n=2, max_new_tokens=4, temperature=0.6))
    assert [len(c) for c in out] == [2, 2]
    # a random model may sample the end-of-turn token; then the sample is shorter
    assert all((c.finish_reason == "length") == (c.completion_tokens == 4) for cs in out for c in cs)
    assert any(c.completion_tokens == 4 for cs in out for c in cs)


def test_not_a_model(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_backend(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(UserError, match="cannot load a causal LM"):
        load_backend(f"hf:{tmp_path}")
    with pytest.raises(UserError, match="no such folder"):
        load_backend("hf:./no/such/model")
