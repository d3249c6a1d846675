"""Tiny llama, qwen2 and qwen3 students through every GGUF type, read back by transformers
(weights equal within the type's precision) and run by llama.cpp (logits equal to HF's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.export.gguf_info import describe_gguf, read_header
from distill.export.gguf_writer import permute_rotary, write_gguf
from distill.backends.logits import kl_and_top1
from distill.export.source import check_model_folder, model_facts

from .conftest import ARCHS, FLOAT_TYPES, QUANT_TYPES

# Worst |error| of a tensor relative to its largest |weight|, as each type's rounding allows.
TOLERANCE = {"f32": 1e-7, "f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2, "q6_k": 2e-2, "q5_k_m": 5e-2,
             "q4_k_m": 8e-2, "q4_0": 0.15}
TEXT = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n<think>\n12 + 30 = 42"


def _hf(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _llama(path, **kw):
    import llama_cpp
    return llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1, n_threads_batch=1, **kw)


def _llama_logits(path, ids):
    llm = _llama(path)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_reads_back_every_type(arch, student, gguf_files):
    source = _hf(student(arch)).state_dict()
    files = gguf_files(arch)
    for kind in FLOAT_TYPES + QUANT_TYPES:
        path = files[kind]
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      dtype=torch.float32).state_dict()
        for name, weight in source.items():
            assert name in loaded, (kind, name)
            err = ((loaded[name] - weight).abs().max() / weight.abs().max()).item()
            assert err <= TOLERANCE[kind], (arch, kind, name, err)
        if kind == "f32":  # and nothing is merely close: f32 is exact, permutation undone
            assert all(torch.equal(loaded[n], w) for n, w in source.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_runs_every_type_like_the_hf_model(arch, student, gguf_files):
    folder = student(arch)
    ids = AutoTokenizer.from_pretrained(folder).encode(TEXT, add_special_tokens=False)
    reference = _hf_logits(_hf(folder), ids)
    scale = np.abs(reference).max()
    for kind, path in gguf_files(arch).items():
        logits = _llama_logits(path, ids)
        err = np.abs(logits - reference).max() / scale
        kl, _ = kl_and_top1(reference, logits)
        # llama.cpp keeps its KV cache in f16, so even f32 weights are not bit-exact
        assert err <= {"f32": 1e-3, "f16": 2e-3, "bf16": 2e-2}.get(kind, 0.5), (arch, kind, err)
        assert kl <= {"f32": 1e-6, "f16": 1e-5, "bf16": 1e-4}.get(kind, 0.1), (arch, kind, kl)


def test_tensor_types_norms_biases_and_tied_embeddings(gguf_files):
    for kind in FLOAT_TYPES:
        metadata, tensors = read_header(gguf_files("qwen2")[kind])
        types = {t["name"]: t["type"] for t in tensors}
        assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
        assert types["blk.0.attn_q.bias"] == types["blk.1.attn_v.bias"] == "F32"
        assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
        assert types["blk.0.ffn_down.weight"] == kind.upper() and types["token_embd.weight"] == kind.upper()
        assert metadata["general.file_type"] == {"f32": 0, "f16": 1, "bf16": 32}[kind]
        assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "qwen2"
        assert metadata["tokenizer.ggml.eos_token_id"] == 2 and metadata["tokenizer.ggml.padding_token_id"] == 0
        assert metadata["tokenizer.ggml.add_bos_token"] is False
        assert "<|im_start|>" in metadata["tokenizer.chat_template"]
    metadata, tensors = read_header(gguf_files("qwen3")["f16"])
    assert metadata["qwen3.attention.key_length"] == metadata["qwen3.attention.value_length"] == 128
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= {t["name"] for t in tensors}


def test_quantized_files_record_the_types_llama_cpp_chose(gguf_files):
    described = describe_gguf(gguf_files("qwen2")["q4_k_m"])
    assert described["file_type"] == "MOSTLY_Q4_K_M"
    # hidden 64 is not a multiple of the 256-wide k-quant blocks: llama.cpp falls back
    assert "Q4_K" not in described["tensor_types"] and described["tensor_types"]["F32"] > 0
    assert sum(described["tensor_types"].values()) == described["tensors"]


def test_header_reader_agrees_with_gguf_reader(gguf_files):
    import gguf
    path = gguf_files("llama")["q5_k_m"]
    reader = gguf.GGUFReader(path)
    _, tensors = read_header(path)
    assert [(t.name, t.tensor_type.name, [int(d) for d in t.shape]) for t in reader.tensors] == \
        [(t["name"], t["type"], t["shape"]) for t in tensors]


def test_llama_rotary_permutation_interleaves_each_head():
    # rows of one head: HF's rotate-half order [x0..x3 | y0..y3] -> llama.cpp pairs (x0 y0 x1 y1 ...)
    w = torch.arange(8).reshape(8, 1)
    assert permute_rotary(w, 1).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_untied_output_and_llama3_rope_scaling(student, tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    folder = student("llama", tied=False, rope_parameters=rope)
    config = check_model_folder(folder)
    out = tmp_path / "m-f32.gguf"
    write_gguf(folder, config, model_facts(folder, config), out, "f32", "m")
    names = {t["name"] for t in read_header(out)[1]}
    assert {"output.weight", "rope_freqs.weight"} <= names
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.encode(" ".join(str(i) for i in range(60)), add_special_tokens=False)[:120]
    reference = _hf_logits(_hf(folder), ids)
    assert np.abs(_llama_logits(out, ids) - reference).max() / np.abs(reference).max() < 1e-3
    # and the scaling matters at these positions: without it the logits are far off
    unscaled = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0}).eval()
    assert np.abs(_hf_logits(unscaled, ids) - reference).max() / np.abs(reference).max() > 1e-2


def test_bf16_and_sharded_checkpoints(student, tmp_path):
    """A bf16 checkpoint split over several safetensors files gives the same bf16 GGUF tensors,
    bit for bit."""
    model = _hf(student("qwen2")).to(torch.bfloat16)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="40KB")
    AutoTokenizer.from_pretrained(student("qwen2")).save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 2
    config = check_model_folder(folder)
    facts = model_facts(folder, config)
    assert facts.dtype == "bf16" and facts.parameters == sum(p.numel() for p in model.parameters())
    out = tmp_path / "m-bf16.gguf"
    write_gguf(folder, config, facts, out, "bf16", "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(loaded[name], weight) for name, weight in model.state_dict().items())


@pytest.mark.parametrize("casts", ["numpy", "torch"])
@pytest.mark.parametrize("source_dtype", [torch.float32, torch.bfloat16])
def test_every_type_rounds_as_torch_does(student, tmp_path, source_dtype, casts, monkeypatch):
    """The writer casts with numpy for a small model, with torch for a large one: either way each
    file type holds exactly the bits torch's own conversion gives (round to nearest even), q/k
    rows permuted, from an fp32 and a bf16 source."""
    import gguf

    from distill.export import gguf_writer
    monkeypatch.setattr(gguf_writer, "TORCH_CASTS_FROM", 0 if casts == "torch" else 10**12)
    model = _hf(student("llama")).to(source_dtype)
    folder = tmp_path / "src"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(student("llama")).save_pretrained(folder)
    config = check_model_folder(folder)
    facts = model_facts(folder, config)
    weights = model.state_dict()
    for ftype, dtype in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        out = tmp_path / f"m-{ftype}.gguf"
        write_gguf(folder, config, facts, out, ftype, "m")
        tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
        q = weights["model.layers.0.self_attn.q_proj.weight"]
        want = permute_rotary(q.float(), facts.heads).to(dtype)
        got = torch.from_numpy(np.asarray(tensors["blk.0.attn_q.weight"].data).copy())
        assert torch.equal(got.view(dtype).reshape(want.shape), want), ftype
        up = weights["model.layers.0.mlp.up_proj.weight"].to(dtype)
        got = torch.from_numpy(np.asarray(tensors["blk.0.ffn_up.weight"].data).copy())
        assert torch.equal(got.view(dtype).reshape(up.shape), up), ftype
