"""The demo model builds: R1 training examples score only the assistant turn, the student base's
pretraining text is not the demo task, and a killed build resumes to the same weights."""

from __future__ import annotations

import random
import re

import pytest

from distill.demo.common import chat_examples, r1_completion
from distill.demo.fit import fit
from distill.demo.pretrain_student import PHRASES, document, story_document, vocabulary_document
from distill.core.demo_task import load_split
from tests.conftest import DEMO_TOKENIZER


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(DEMO_TOKENIZER)


def test_chat_examples_score_only_the_assistant_turn(tokenizer):
    row = load_split("train")[0]
    completion = r1_completion(row["reasoning"], row["answer"])
    assert completion == f"{row['reasoning']}\n</think>\n\n\\boxed{{{row['answer']}}}"
    (example,) = chat_examples(tokenizer, [(row["question"], completion)])
    ids, first = example["input_ids"], example["prompt_len"]
    from distill.core.traces import labels_of
    labels = labels_of({"input_ids": __import__("numpy").asarray(ids), "prompt_len": first}).tolist()
    assert all(label == -100 for label in labels[:first]) and labels[first:] == ids[first:]
    prompt = tokenizer.decode(ids[:first])
    assert prompt.endswith("<|im_start|>assistant\n") and row["question"] in prompt
    assert "Please reason step by step" in prompt
    assert tokenizer.decode(ids[first:]) == f"<think>\n{completion}<|im_end|>"


def test_student_pretraining_text_is_not_the_demo_task():
    rng = random.Random(0)
    texts = [document(rng) for _ in range(300)]
    corpus = "\n".join(texts)
    for marker in ("<think>", "</think>", "\\boxed", "<|im_start|>", "gives away", " more.",
                   "have now", "Then ", "doubles", "triples", "Please reason"):
        assert marker not in corpus, marker
    # Equations stand alone: the next line rarely continues from the previous result, unlike a
    # worked solution, where every line does.
    chained = total = 0
    for text in texts:
        lines = text.split("\n")
        for a, b in zip(lines, lines[1:]):
            if " = " in a and " = " in b:
                total += 1
                chained += b.split()[0] == a.split()[-1]
    assert total > 1000 and chained / total < 0.05
    assert len(set(texts)) == len(texts)


def test_most_pretraining_equations_say_their_operation_in_words_first():
    rng = random.Random(0)
    lines = [line for _ in range(300) for line in document(rng).split("\n") if " = " in line]
    announced = [line for line in lines if ": " in line]
    # Otherwise the operator is unpredictable from context and the base learns to ignore it.
    assert len(announced) / len(lines) > 0.7
    for line in announced:
        said, equation = line.split(": ")
        a, op, b = equation.split(" = ")[0].split()
        assert eval(f"{a} {op} {b}") == int(equation.split(" = ")[1]), line
        assert a in said and b in said, line
        # The words name this operation and no other.
        matches = [o for o, phrases in PHRASES.items()
                   if any(said == phrase.format(a=a, b=b)[:-2] for phrase in phrases)]
        assert matches == [op], line
    assert {line.split(" = ")[0].split()[-2] for line in announced} == set("+-*")


def test_word_problems_are_worked_correctly_but_are_not_the_demo_task():
    rng = random.Random(0)
    texts = [story_document(rng) for _ in range(300)]
    corpus = "\n".join(texts)
    for marker in ("<think>", "</think>", "\\boxed", "<|im_start|>", "gives away", "gets ",
                   "have now", "Then ", "doubles", "triples", "quadruples", "Please reason"):
        assert marker not in corpus, marker
    demo_questions = {r["question"] for r in load_split("test") + load_split("train")}
    checked = 0
    for text in texts:
        for part in text.split("\n\n"):
            assert part not in demo_questions
            lines = part.split("\n")
            equations = [line for line in lines if " = " in line]
            for line in equations:
                left, right = line.split(" = ")
                assert eval(left) == int(right), line
                checked += 1
            # A story's numbers come from its text and each result is carried to the next line.
            if len(lines) > 1:
                assert equations[0].split()[0] in lines[0]
                for a, b in zip(equations, equations[1:]):
                    assert b.split()[0] == a.split()[-1]
    assert checked > 1000


def test_a_build_can_stop_early_in_its_schedule(tiny_model, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    rows = load_split("train")[:16]
    examples = chat_examples(tokenizer, [(r["question"], r1_completion(r["reasoning"], r["answer"])) for r in rows])
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen2"), dtype=torch.float32)
    info = fit(model, examples, steps=20, stop_at=3, batch_size=4, lr=1e-3, seed=0, warmup=2, work_dir=tmp_path,
               fingerprint="x")
    assert info["steps"] == 3 and (tmp_path / "checkpoint-3").is_dir()
    # The lr followed the 20-step schedule: 3 steps in, it is near its peak, not decayed to the floor.
    state = torch.load(tmp_path / "checkpoint-3" / "scheduler.pt", weights_only=True)
    assert state["_last_lr"][0] > 0.9e-3
    again = fit(model, examples, steps=20, stop_at=3, batch_size=4, lr=1e-3, seed=0, warmup=2, work_dir=tmp_path,
                fingerprint="x")
    assert again["steps"] == 3 and not (tmp_path / "checkpoint-4").exists()  # a finished phase is not trained on


def test_a_killed_build_resumes_to_the_same_weights(tiny_model, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    rows = load_split("train")[:24]
    examples = chat_examples(tokenizer, [(r["question"], r1_completion(r["reasoning"], r["answer"])) for r in rows])
    folder = tiny_model("qwen2")
    settings = dict(batch_size=4, lr=1e-3, seed=1, warmup=2, checkpoint_every=3, fingerprint="a")

    def fresh():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    straight = fresh()
    fit(straight, examples, steps=8, work_dir=tmp_path / "straight", **settings)

    class Killed(Exception):
        pass

    def kill(step):
        raise Killed(step)

    with pytest.raises(Killed):  # killed right after the checkpoint at step 3
        fit(fresh(), examples, steps=8, work_dir=tmp_path / "resumed", on_checkpoint=kill, **settings)
    resumed = fresh()
    info = fit(resumed, examples, steps=8, work_dir=tmp_path / "resumed", **settings)
    assert info["steps"] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name

    # Other settings never resume someone else's checkpoint.
    other = fresh()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    fit(other, examples, steps=1, work_dir=tmp_path / "resumed", **{**settings, "fingerprint": "b", "warmup": 0})
    assert any(not torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert not torch.allclose(other.state_dict()["model.embed_tokens.weight"],
                              straight.state_dict()["model.embed_tokens.weight"])


def test_phase_two_uses_the_everyday_words_the_task_needs_but_not_its_sentences(tokenizer):
    from collections import Counter
    rng = random.Random(1)
    texts = [vocabulary_document(rng) for _ in range(300)]
    corpus = "\n".join(texts)
    # The task's sentences and format stay unseen: only the words are known.
    for marker in ("<think>", "\\boxed", "<|im_start|>", "gives away", "more.", "them.", "have now",
                   "Please reason"):
        assert marker not in corpus, marker
    for line in corpus.split("\n"):
        assert not re.search(r"Then \w+ (gets|gives|doubles|triples|quadruples)", line), line
        for equation in [part for part in line.split(": ")[1:] if " = " in part]:
            left, right = equation.rstrip(".").split(" = ")[-2:]
            assert eval(left.split(" get ")[-1]) == int(right), line
    counts = Counter(t for text in texts for t in tokenizer.tokenize(text))
    for word in ("Then", "How", "now", "gets", "doubles", "triples", "quadruples"):
        assert counts["Ġ" + word] >= 50, word


def test_multiplier_probe_reads_the_factor_positions_of_the_test_split(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.demo.probe_multiplier import demo_factor_table, next_token_probs
    folder = tiny_model("qwen2")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    table = demo_factor_table(model, tokenizer, problems=40)
    assert table.shape == (3, 3) and torch.allclose(table.sum(1), torch.ones(3))
    # the three options differ only in their last token: the probabilities are of distinct ids
    probs = next_token_probs(model, tokenizer, "Ava has 3 cups. 3 * ", ["2", "3", "4"])
    assert probs.shape == (3,) and len(set(probs.tolist())) == 3


def test_the_moe_teacher_build_trains_with_its_load_balancing_loss(tiny_model, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    rows = load_split("train")[:8]
    examples = chat_examples(tokenizer, [(r["question"], r1_completion(r["reasoning"], r["answer"])) for r in rows])
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3_moe"), dtype=torch.float32)
    model.config.output_router_logits = True  # as train_teacher sets it
    before = {k: v.clone() for k, v in model.state_dict().items() if "gate" in k}
    info = fit(model, examples, steps=2, batch_size=4, lr=1e-2, seed=0, warmup=0, work_dir=tmp_path, fingerprint="t")
    assert info["steps"] == 2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
