"""Memory: the estimate printed before training (checked against public parameter counts and a
measured run), the refusal on a GPU that is too small, the peak recorded in train_summary.json and
the model card, and a LoRA merge that never holds a second copy of the model."""

import gc
import json

import pytest
import torch

from distill.core.config import build_config
from distill.core.errors import UserError
from distill.train import estimate as est
from distill.train import models
from distill.train.stage import run
from distill.train.config import TrainConfig

from .helpers import trace_rows, write_generate_folder


@pytest.mark.parametrize("name,billions", [("qwen2.5-0.5b", 0.494), ("qwen2.5-1.5b", 1.544), ("qwen2.5-7b", 7.616)])
def test_parameter_counts_match_the_published_sizes(name, billions):
    # The model cards give 0.49B, 1.54B and 7.61B parameters.
    assert est.Shape(**est.KNOWN[name]).parameters() / 1e9 == pytest.approx(billions, rel=0.005)


def test_parameter_count_matches_a_real_model(tiny_model):
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = tiny_model("qwen2")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert est.Shape.of(AutoConfig.from_pretrained(folder)).parameters() == sum(p.numel() for p in model.parameters())


def test_the_estimate_grows_as_it_should():
    shape = est.Shape(**est.KNOWN["qwen2.5-1.5b"])
    full = est.estimate(shape, tokens=8192, lora=False, bf16=True, checkpointing=True)
    lora = est.estimate(shape, tokens=8192, lora=True, bf16=True, checkpointing=True)
    longer = est.estimate(shape, tokens=4 * 8192, lora=True, bf16=True, checkpointing=True)
    no_ckpt = est.estimate(shape, tokens=8192, lora=True, bf16=True, checkpointing=False)
    sharded = est.estimate(shape, tokens=8192, lora=False, bf16=True, checkpointing=True, shards=8)
    assert lora["total"] < full["total"] and sharded["total"] < full["total"]
    assert longer["parts"]["activations"] == 4 * lora["parts"]["activations"]
    assert no_ckpt["parts"]["activations"] > 5 * lora["parts"]["activations"]
    # the chunked loss does not grow with the tokens beyond the hidden states it keeps
    assert longer["parts"]["loss (one chunk)"] - lora["parts"]["loss (one chunk)"] == 3 * 8192 * 1536 * 2


def test_a_gpu_too_small_is_refused_with_the_settings_to_change(tiny_model, monkeypatch):
    from transformers import AutoConfig

    from distill.train.setup import Device, TrainData, say_what_fits

    class Props:
        total_memory = 24 * est.GB

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a 24 GB GPU")
    big = AutoConfig.for_model("qwen2", **est.KNOWN["qwen2.5-7b"])
    config = TrainConfig(student="x", max_seq_len=16384, batch_size=4)
    device = Device(gpu=True, bf16=True, checkpointing=True, attention="sdpa", world=1)

    def data(model_config):
        return TrainData(None, None, None, model_config, None, None, [], [], 0, "")
    with pytest.raises(UserError, match=r"memory: this run needs about .* GB per GPU .* has 24.0 GB; change: --lora"):
        say_what_fits(config, data(big), device, True)
    small = AutoConfig.from_pretrained(tiny_model("qwen2"))
    assert say_what_fits(config, data(small), device, True)["total"] < 24 * est.GB


def test_lora_run_records_peak_memory_and_merges_without_a_second_copy(tiny_model, tmp_path, monkeypatch):
    from transformers import PreTrainedModel
    alive_at_merge = []
    real_merge = models.merge_lora

    def watching_merge(*args, **kwargs):
        gc.collect()
        alive_at_merge.extend(type(o).__name__ for o in gc.get_objects()
                              if isinstance(o, PreTrainedModel) and o.name_or_path == str(student))
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(models, "merge_lora", watching_merge)
    student = tiny_model("qwen2")
    traces = write_generate_folder(tmp_path / "gen", trace_rows(12))
    out = tmp_path / "student"
    config = build_config(TrainConfig, {"student": str(student), "traces": str(traces), "out": str(out),
                                        "lora": True, "max_steps": 2, "batch_size": 4, "threads": 1,
                                        "eval_fraction": 0.0})
    run(config)
    assert alive_at_merge == [], f"models alive while merging: {alive_at_merge}"
    peak = json.loads((out / "train_summary.json").read_text())["peak_memory"]
    assert peak["measure"] == "process peak RSS" and peak["processes"] == 1
    assert peak["mb"] > 200 and peak["estimated_mb"] > 0
    assert f"Peak memory: {peak['mb'] / 1024:.2f} GB (process peak RSS" in (out / "README.md").read_text()


def test_muon_state_counts_one_buffer_per_hidden_matrix(tiny_model):
    from transformers import AutoConfig, AutoModelForCausalLM
    from distill.train.trainer import muon_weights
    folder = tiny_model("qwen2")
    matrices, rest = muon_weights(AutoModelForCausalLM.from_pretrained(folder))
    shape = est.Shape.of(AutoConfig.from_pretrained(folder))
    muon = est.estimate(shape, tokens=64, lora=False, bf16=False, checkpointing=False, muon=True)
    state = sum(p.numel() for p in matrices) + 2 * sum(p.numel() for p in rest)
    assert muon["parts"]["optimizer (Muon + AdamW)"] == 4 * state
