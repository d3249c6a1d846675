"""The bundled demo models: the MoE teacher, the dense student base and the tokenizer they share.
Shapes and sizes are read from the files themselves; a few generations check that the teacher
really solves the task and that the base really is a base."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distill.data import asset
from distill.core.demo_task import load_split
from tests.conftest import DEMO_TOKENIZER

TEACHER = asset("models", "demo-teacher")
STUDENT_BASE = asset("models", "demo-student-base")


def safetensors_parameters(folder: Path) -> int:
    """Parameter count from the safetensors header (tied embeddings are stored once)."""
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            n = 1
            for dim in meta["shape"]:
                n *= dim
            total += n
    return total


def config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def teacher():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32),
            AutoTokenizer.from_pretrained(TEACHER))


def test_tokenizer_has_think_tokens_chat_template_and_single_digits():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    vocab = tok.get_vocab()
    for token in ("<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert token in vocab
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.tokenize("<think>\n12</think>")[0] == "<think>"
    assert [t for t in tok.tokenize("x 2026") if t.strip("Ġ")] == ["x", "2", "0", "2", "6"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((DEMO_TOKENIZER / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"


@pytest.mark.parametrize("folder", [TEACHER, STUDENT_BASE], ids=["teacher", "student-base"])
def test_models_ship_safetensors_with_the_demo_tokenizer(folder):
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pkl"))}
    assert json.loads((folder / "tokenizer.json").read_text()) == json.loads((DEMO_TOKENIZER / "tokenizer.json").read_text())
    assert (folder / "chat_template.jinja").read_text() == (DEMO_TOKENIZER / "chat_template.jinja").read_text()
    generation = json.loads((folder / "generation_config.json").read_text())
    vocab = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in vocab if t["content"] == "<|im_end|>")
    assert generation["eos_token_id"] == im_end == config(folder)["eos_token_id"]
    assert (folder / "README.md").is_file()


def test_teacher_is_a_small_top2_moe():
    cfg = config(TEACHER)
    assert cfg["model_type"] in ("qwen3_moe", "qwen2_moe")
    experts_count = cfg.get("num_experts", cfg.get("num_local_experts"))  # transformers 5 renamed it
    assert experts_count >= 8 and cfg["num_experts_per_tok"] == 2
    assert (TEACHER / "model.safetensors").stat().st_size <= 30 * 1024 * 1024
    raw = (TEACHER / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    experts = [name for name in header if ".mlp.experts." in name]
    assert experts, "the checkpoint has no expert weights"
    # Saved in the per-expert layout (model.layers.L.mlp.experts.E.*), which every runtime reads.
    indices = {name.split(".mlp.experts.")[1].split(".")[0] for name in experts if ".layers.0." in name}
    assert len(indices) == experts_count


def test_student_base_is_a_dense_qwen2_a_quarter_of_the_teacher():
    cfg = config(STUDENT_BASE)
    assert cfg["model_type"] == "qwen2"
    assert cfg["hidden_size"] % 256 == 0
    assert "num_experts" not in cfg
    assert cfg["vocab_size"] == config(TEACHER)["vocab_size"]
    # About a quarter: its untied head (a copy of the embeddings) puts it at 25.3%.
    assert safetensors_parameters(STUDENT_BASE) <= 0.26 * safetensors_parameters(TEACHER)
    assert cfg["tie_word_embeddings"] is False  # distill/demo/pretrain_student.py: untie_head says why


def test_teacher_model_card_records_its_accuracy():
    card = (TEACHER / "README.md").read_text()
    greedy = float(re.search(r"\| greedy \| ([0-9.]+) \|", card).group(1))
    assert greedy >= 0.9
    assert "python -m distill.demo.train_teacher" in card


def test_teacher_solves_test_problems_in_the_r1_format(teacher, one_torch_thread):
    from distill.demo.common import complete, grade
    model, tok = teacher
    rows = load_split("test")[:12]
    texts = complete(model, tok, [r["question"] for r in rows], max_new_tokens=60)
    graded = [grade(text, row["answer"]) for text, row in zip(texts, rows)]
    assert all(closed for _, closed in graded), texts
    assert sum(ok for ok, _ in graded) >= 10, texts
    assert all(re.search(r"</think>\s*\\boxed\{\d+\}$", t.strip()) for t in texts), texts


def test_teacher_spreads_tokens_over_its_experts(teacher):
    import torch
    model, tok = teacher
    ids = tok(load_split("test")[0]["question"], return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, output_router_logits=True)
    assert len(out.router_logits) == model.config.num_hidden_layers
    for layer_logits in out.router_logits:
        assert layer_logits.shape == (ids.shape[1], model.config.num_experts)
        chosen = torch.topk(layer_logits, model.config.num_experts_per_tok, dim=-1).indices
        # A router that collapsed onto a few experts would make this a dense model in disguise.
        assert len(torch.unique(chosen)) >= model.config.num_experts // 2


def test_student_base_knows_arithmetic_but_not_the_task(one_torch_thread):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from distill.demo.common import complete
    model = AutoModelForCausalLM.from_pretrained(STUDENT_BASE, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(STUDENT_BASE)
    sums = [(17, "+", 8), (25, "*", 3), (61, "-", 9), (48, "*", 4), (123, "+", 7)]
    prompts = [f"{a} {op} {b} =" for a, op, b in sums]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = [t.split("\n")[0].strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                   skip_special_tokens=True)]
    assert answers == [str(eval(f"{a}{op}{b}")) for a, op, b in sums]
    # It has never seen a chat turn or the R1 format: it does not answer a demo problem in it.
    texts = complete(model, tok, [r["question"] for r in load_split("test")[:4]], max_new_tokens=48)
    assert not any(re.search(r"</think>\s*\\boxed\{\d+\}", t) for t in texts), texts


def test_student_base_reads_the_operation_from_the_words_before_it(one_torch_thread):
    """A base whose operator is a coin toss after its context learns to ignore the context there,
    and a student fine-tuned from it cannot learn which operation a problem asks for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(STUDENT_BASE, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(STUDENT_BASE)
    ops = {op: tok.convert_tokens_to_ids(f"Ġ{op}") for op in "+-*"}
    probes = [("Add 8 to 19: 19", "+"), ("Take 8 from 19: 19", "-"), ("Multiply 19 by 3: 19", "*"),
              ("Uma had 21 pens. Uma bought 7 more.\n21", "+"),
              ("Uma had 21 pens. Uma lost 7.\n21", "-"),
              ("Uma had 21 pens. The number grew 3 times.\n21", "*")]
    for prompt, op in probes:
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0, -1], -1)
        chosen = max(ops, key=lambda o: probs[ops[o]])
        assert chosen == op and probs[ops[op]] > 0.8, (prompt, {o: round(probs[i].item(), 2) for o, i in ops.items()})

