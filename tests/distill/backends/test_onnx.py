"""The onnxruntime-genai backend on a tiny Qwen2 exported to ONNX fp32 by `distill export`."""

from __future__ import annotations

import json
import shutil

import pytest

from distill.core.errors import UserError
from distill.backends import Sampling, load_backend, parse_spec

QUESTIONS = ["Ava has 5 apples. Then Ava gets 3 more. How many apples does Ava have now?",
             "Ben has 12 coins. Then Ben gives away 4. How many coins does Ben have now?",
             "Cleo has 7 pens. How many pens does Cleo have now?"]


@pytest.fixture(scope="module")
def onnx(exported):
    backend = load_backend(f"onnx:{exported['onnx']}", batch_size=2, threads=1)
    yield backend
    backend.close()


def test_bare_folder_is_detected_and_rendered_with_its_chat_template(exported, onnx):
    assert parse_spec(str(exported["onnx"])) == ("onnx", str(exported["onnx"]))
    prompt = onnx.render("Hi")
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert onnx.threads == 1


def test_batched_greedy_equals_one_prompt_at_a_time_and_transformers(onnx, stable_model):
    prompts = [onnx.render(q) for q in QUESTIONS]
    greedy = Sampling(n=2, max_new_tokens=10)
    batched = onnx.generate(prompts, greedy)  # 6 sequences in batches of 2, padded
    single = [onnx.generate([p], Sampling(n=1, max_new_tokens=10))[0][0] for p in prompts]
    assert [c[0].text for c in batched] == [c.text for c in single]
    assert all(c[0].text == c[1].text for c in batched)
    hf = load_backend(f"hf:{stable_model}", batch_size=1)
    try:
        assert [c[0].text for c in hf.generate(prompts, Sampling(max_new_tokens=10))] == [c.text for c in single]
    finally:
        hf.close()
    for c, prompt in zip(single, prompts):
        assert c.finish_reason == "length" and c.completion_tokens == 10
        assert c.prompt_tokens == len(onnx.encode(prompt)) and c.ttft_s > 0 and c.decode_s >= 0


def test_sampling_is_seeded_and_reported_as_it_finishes(onnx):
    prompt = onnx.render(QUESTIONS[0])
    done = []
    sampled = Sampling(n=3, max_new_tokens=8, temperature=1.0, top_p=0.95, seed=11)
    first = onnx.generate([prompt, prompt], sampled, on_done=lambda i, cs: done.append((i, len(cs))))
    assert done == [(0, 3), (1, 3)]
    assert len({c.text for c in first[0]}) > 1  # the samples differ
    assert [c.text for c in onnx.generate([prompt, prompt], sampled)[0]] == [c.text for c in first[0]]


def test_stop_strings_and_the_context_limit(onnx):
    prompt = onnx.render(QUESTIONS[1])
    free = onnx.generate([prompt], Sampling(max_new_tokens=10))[0][0].text
    stop = free[3:6]
    cut = onnx.generate([prompt], Sampling(max_new_tokens=10, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop" and cut.text == free[:free.index(stop)]
    too_long = onnx.generate(["x " * (onnx.context_length + 10)], Sampling(max_new_tokens=4))[0][0]
    assert too_long.error and "does not fit" in too_long.error


def test_folders_onnxruntime_cannot_load_are_user_errors(tmp_path, exported):
    with pytest.raises(UserError, match="no genai_config.json"):
        load_backend(f"onnx:{tmp_path}")
    broken = tmp_path / "broken"
    shutil.copytree(exported["onnx"], broken)
    (broken / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="onnxruntime-genai cannot load the model"):
        load_backend(f"onnx:{broken}")
    (broken / "genai_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="malformed genai_config.json"):
        load_backend(f"onnx:{broken}")
    assert json.loads((exported["onnx"] / "genai_config.json").read_text())  # the original is intact
