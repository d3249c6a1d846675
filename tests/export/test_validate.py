"""The validation's greedy judgement: hand-made logits for the verdict's rules, and a real GGUF
checked against the HF model it came from (passes) and against another model with the same
tokenizer (fails, on the greedy text and on the KL divergence alike)."""

from __future__ import annotations

import numpy as np

from distill.export.reference import greedy_verdict, local_reference
from distill.export.validate import TIE_TOLERANCE, check_gguf

EOS = {9}


def _steps(*rows: dict[int, float], vocab: int = 10) -> np.ndarray:
    """Next-token logits, one row a step: the given ids' logits, every other id at 0."""
    out = np.zeros((len(rows), vocab), dtype=np.float32)
    for i, row in enumerate(rows):
        for token, logit in row.items():
            out[i, token] = logit
    return out


def test_greedy_tokens_match():
    logits = _steps({3: 5.0}, {4: 5.0}, {9: 5.0})
    assert greedy_verdict(logits, [3, 4, 9], EOS, 5e-3, new_tokens=16) == {"match": True, "exact": True}


def test_a_clear_difference_fails_and_a_near_tie_does_not():
    logits = _steps({3: 5.0, 7: 4.0}, {4: 5.0})
    wrong = greedy_verdict(logits, [7, 4], EOS, 5e-3, new_tokens=2)
    assert not wrong["match"] and wrong["first_difference"] == 0 and wrong["expected"] == 3
    assert wrong["logit_gap"] == 1.0 and wrong["tolerance"] == 0.025  # 5e-3 of the largest |logit|
    tied = _steps({3: 5.0, 7: 4.99}, {4: 5.0})
    verdict = greedy_verdict(tied, [7, 1], EOS, 5e-3, new_tokens=2)  # after a tie: not comparable
    assert verdict["match"] and not verdict["exact"] and verdict["first_difference"] == 0


def test_stopping_early_or_going_on_past_the_end_fails():
    logits = _steps({3: 5.0}, {4: 5.0}, {5: 5.0})
    early = greedy_verdict(logits, [3, 4], EOS, 5e-3, new_tokens=3)  # no end, fewer than asked
    assert not early["match"] and early["first_difference"] == 2 and early["expected"] == 5
    past_end = _steps({3: 5.0}, {9: 5.0}, {5: 5.0})
    assert not greedy_verdict(past_end, [3, 4, 5], EOS, 5e-3, new_tokens=3)["match"]


def test_judge_uses_the_hf_model(student):
    import torch
    from transformers import AutoModelForCausalLM
    folder = student("qwen2")
    ref = local_reference(folder, new_tokens=8)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():  # the HF model's own greedy continuation, step by step
        ids = list(ref.prompts[0])
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    own = ids[len(ref.prompts[0]):]
    assert ref.judge(0, own, TIE_TOLERANCE["f16"])()["match"]
    other = [(t + 1) % model.config.vocab_size for t in own]
    assert not ref.judge(0, other, TIE_TOLERANCE["f16"])()["match"]


def test_a_gguf_of_other_weights_fails_validation(student, gguf_files, tmp_path):
    qwen2_f16 = gguf_files("qwen2")["f16"]
    own = local_reference(student("qwen2"))
    passed = check_gguf(qwen2_f16, "f16", own, tmp_path / "own", 1, None, 1.0)
    assert passed["passed"] and passed["greedy"]["match"], passed
    # Another random model with the same tokenizer and prompts (a wider MLP): other weights.
    other = local_reference(student("qwen2", intermediate_size=96))
    assert other.prompts == own.prompts
    failed = check_gguf(qwen2_f16, "f16", other, tmp_path / "other", 1, None, 1.0)
    assert not failed["passed"] and not failed["greedy"]["match"]
    assert "greedy continuation differs from the HF model" in failed["failures"]
    assert any(f.startswith("KL divergence from the HF model") for f in failed["failures"])


def test_the_checkers_guess_of_the_inputs_is_the_hf_tokenizers(student, gguf_files, monkeypatch):
    """The first checker decodes before the HF ids come, from the ids the GGUF's own chat template
    and tokenizer give; on a model exported here, those are the HF tokenizer's ids exactly, so
    the guess is what gets used (a guess that differs is decoded again, below)."""
    from distill.export import gguf_check

    monkeypatch.setattr(gguf_check, "parent_has_sent", lambda: False)  # no parent: the held-out text too
    path = gguf_files("qwen2")["f16"]
    ref = local_reference(student("qwen2"), new_tokens=8)
    llm, error = gguf_check._load({"path": str(path), "threads": 1}, gguf_check.CHECK_CONTEXT)
    assert error is None
    try:
        guessed = gguf_check._guessed_runs(str(path), llm, 8, greedy=True)
        assert guessed["prompts"] == ref.prompts and guessed["held_out"] == ref.held_out
        one_at_a_time = []
        for prompt in ref.prompts:  # llama-cpp-python's own greedy decoding, a sequence at a time
            llm.reset()
            one_at_a_time.append([int(t) for t, _ in zip(llm.generate(prompt, temp=0.0, top_k=1), range(8))])
        assert guessed["greedy"] == one_at_a_time
    finally:
        llm.close()


def test_a_wrong_guess_is_decoded_again(student, gguf_files, tmp_path):
    """Inputs other than the guess (here, prompts without their first token): the greedy runs sent
    back are those of the inputs, as from a checker that made no guess."""
    from distill.export.validate import inputs_part, start_check_gguf

    path = gguf_files("qwen2")["f16"]
    ref = local_reference(student("qwen2"), new_tokens=8)
    ref.prompts = [p[1:] for p in ref.prompts]
    runs = {}
    for guess in (None, 8):
        child = start_check_gguf(path, "f16", 1, None, 1.0, None, tmp_path / f"check-{guess}.log", guess=guess)
        child.send(inputs_part(ref))
        runs[guess] = child.receive()["greedy_tokens"]
        child.stop()
    assert runs[8] == runs[None] and len(runs[None]) == len(ref.prompts)
