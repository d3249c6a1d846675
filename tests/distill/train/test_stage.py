"""`distill train` end to end on tiny models: full SFT with packing, LoRA merged into the saved
model, logit distillation from an MoE teacher with a padded vocabulary, and bad inputs."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from distill import cli
from distill.core.config import build_config
from distill.core.records import is_up_to_date
from distill.train.stage import run
from distill.train.config import TrainConfig

from .helpers import trace_rows, without_chat_template, write_generate_folder, write_jsonl

runner = CliRunner()
FAST = {"threads": 1, "max_steps": 6, "batch_size": 4, "logging_steps": 2, "save_steps": 100, "quiet": None}


def _config(**values) -> TrainConfig:
    values = {**FAST, **values}
    values.pop("quiet")
    return build_config(TrainConfig, values)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_sft_with_packing_writes_a_loadable_student(tiny_model, tmp_path):
    student = tiny_model("qwen2")
    dropped = [{**r, "kept": False, "drop_reason": "wrong_answer"} for r in trace_rows(4)]
    traces = write_generate_folder(tmp_path / "gen", trace_rows(24, teacher="hf:tiny-moe-teacher"), dropped)
    out = tmp_path / "student"
    config = _config(student=str(student), traces=str(traces), out=str(out), packing=True, eval_fraction=0.2,
                     lr=1e-3, eval_steps=3)
    result = run(config)
    assert is_up_to_date("train", config, out)  # `distill run` would skip it now

    trained, before = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(student)
    pairs = list(zip(before.state_dict().items(), trained.state_dict().items()))
    assert all(not torch.equal(a, b) for (_, a), (_, b) in pairs), "every parameter should have moved"

    tok = AutoTokenizer.from_pretrained(out)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    generation = json.loads((out / "generation_config.json").read_text())
    stops = generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else [generation["eos_token_id"]]
    assert stops[0] == eot and tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == result["steps"] == 6 and summary["padding_fraction"] == 0.0
    assert summary["samples"]["train"] + summary["samples"]["heldout"] == 24 and summary["samples"]["heldout"] > 0
    history = summary["loss_history"]
    assert [s for s, _ in history["train"]] == [1, 2, 4, 6] and [s for s, _ in history["heldout"]] == [3, 6]
    assert history["train"][-1][1] < history["train"][0][1]
    assert summary["tokens_seen"] > 0 and summary["tokens_per_second"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    card = (out / "README.md").read_text()
    assert "hf:tiny-moe-teacher" in card and "| `lr` | 0.001 |" in card and "wrong_answer 4" in card
    record = json.loads((out / "train.json").read_text())
    assert record["stage"] == "train" and "model.safetensors" in {o["path"] for o in record["outputs"]}
    from distill.core.chat import load_prompt_template
    asked = json.loads((out / "distill.json").read_text())  # how the student was taught to be asked
    assert asked == {"prompt_template": load_prompt_template("r1"), "think": True}
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".tmp-") or p.name in ("checkpoints", "training_args.bin")]
    assert leftovers == []


def test_lora_is_merged_and_gives_the_adapter_logits(tiny_model, tmp_path):
    from peft import PeftModel
    student = tiny_model("qwen2")
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(16))
    out = tmp_path / "student"
    run(_config(student=str(student), traces=str(traces), out=str(out), lora=True, lora_r=4,
                keep_adapter=True, lr=2e-2, max_steps=4, eval_fraction=0, packing=False))

    assert not (out / "adapter_config.json").exists()  # the folder itself is a plain model
    merged = AutoModelForCausalLM.from_pretrained(out)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student), out / "adapter")
    ids = torch.tensor([AutoTokenizer.from_pretrained(out)("Ava has 3 apples. 3 + 4 = 7")["input_ids"]])
    torch.testing.assert_close(_logits(merged, ids), _logits(adapted, ids), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_logits(merged, ids), _logits(AutoModelForCausalLM.from_pretrained(student), ids))

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["lora"] and summary["parameters"]["trainable"] < summary["parameters"]["total"] / 2
    assert 0 < summary["padding_fraction"] < 1  # padded batches of unequal traces


def test_kd_from_a_teacher_with_a_padded_vocabulary(tiny_model, tmp_path):
    teacher_dir = tmp_path / "teacher"
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3_moe"))
    teacher.resize_token_embeddings(640)  # same tokenizer, embedding matrix padded like Qwen2.5-7B's
    teacher.save_pretrained(teacher_dir)
    AutoTokenizer.from_pretrained(tiny_model("qwen3_moe")).save_pretrained(teacher_dir)
    traces = write_jsonl(tmp_path / "traces.jsonl", trace_rows(12))
    out = tmp_path / "student"
    run(_config(student=str(tiny_model("qwen2")), traces=str(traces), out=str(out), method="kd",
                teacher=str(teacher_dir), kd_loss="jsd", kd_alpha=0.3, kd_temperature=2.0, packing=True,
                max_steps=3, eval_fraction=0))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["method"] == "kd" and math.isfinite(summary["final"]["train_loss"])
    assert f"KD teacher (logits): `{teacher_dir}`" in (out / "README.md").read_text()


def _bad_case(case, tiny_model, tmp_path, monkeypatch):
    kept = write_jsonl(tmp_path / "traces.jsonl", trace_rows(4))
    student = str(tiny_model("qwen2"))
    if case == "muon under FSDP":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        return ["--student", student, "--traces", str(kept), "--optimizer", "muon"], "muon needs whole weight matrices"
    if case == "no kept traces":
        none_kept = [{**r, "kept": False, "drop_reason": "wrong_answer"} for r in trace_rows(3)]
        return ["--student", student, "--traces", str(write_jsonl(tmp_path / "gen" / "samples.jsonl", none_kept))], \
            "no kept traces"
    if case == "not a causal LM":
        from transformers import DistilBertConfig
        DistilBertConfig(vocab_size=508, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(tmp_path / "enc")
        AutoTokenizer.from_pretrained(student).save_pretrained(tmp_path / "enc")
        return ["--student", str(tmp_path / "enc"), "--traces", str(kept)], "not a causal language model"
    if case == "no chat template":
        return ["--student", str(without_chat_template(tiny_model("qwen2"), tmp_path)), "--traces", str(kept)], \
            "has no chat template"
    return ["--student", student, "--traces", str(kept), "--method", "kd", "--teacher", str(tiny_model("llama"))], \
        "its tokenizer differs from the student's"


@pytest.mark.parametrize("case", ["no kept traces", "not a causal LM", "no chat template", "teacher with another tokenizer",
                                  "muon under FSDP"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(case, tiny_model, tmp_path, monkeypatch):
    args, message = _bad_case(case, tiny_model, tmp_path, monkeypatch)
    result = runner.invoke(cli.app, ["train", *args, "--out", str(tmp_path / "out"), "--threads", "1"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_muon_splits_weights_and_lowers_the_loss():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from distill.train.trainer import muon_weights, muon_with_adamw
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    matrices, rest = muon_weights(model)
    assert all(p.ndim == 2 for p in matrices) and model.get_input_embeddings().weight in rest
    assert len(matrices) == 2 * 7  # q, k, v, o, gate, up, down per layer
    opt = muon_with_adamw(model, 1e-2, 0.0)
    ids = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(20):
        loss = model(ids, labels=ids).loss
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    restored = muon_with_adamw(model, 1e-2, 0.0)
    restored.load_state_dict(opt.state_dict())
    assert restored.state_dict()["parts"][0]["state"].keys() == opt.state_dict()["parts"][0]["state"].keys()
