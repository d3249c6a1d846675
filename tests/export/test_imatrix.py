"""The importance matrix: llama.cpp's file format, values against a direct computation, calibrated
quants that differ from uncalibrated ones and load, the types that need a matrix, bad calibration
sources, and the profile that chooses the type with the lowest measured KL divergence."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distill.core.demo_task import generate
from distill import cli
from distill.core.errors import UserError
from distill.export.calibration import resolve_calibration
from distill.export.gguf_info import read_header
from distill.export.gguf_writer import write_gguf
from distill.export.imatrix import compute_imatrix, read_imatrix, write_imatrix
from distill.export.profiles import Profile, choose_gguf, load_profile
from distill.export.quantize import quantize
from distill.export.source import check_model_folder, model_facts

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def write_traces(path: Path, n: int, repeat: int = 1) -> Path:
    rows = [{"problem": p["question"], "reasoning": "\n".join([p["reasoning"]] * repeat),
             "answer": f"The answer is \\boxed{{{p['answer']}}}."} for p in generate("train", n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def export(*args: str):
    return runner.invoke(cli.app, ["export", "--quiet", "--threads", "1", *args])


def fails_cleanly(workdir: Path, *args: str) -> str:
    before = sorted(p.name for p in workdir.iterdir())
    result = export("--out", str(workdir / "export"), *args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == before
    return lines[0]


@pytest.fixture(scope="module")
def calibrated(student, tmp_path_factory):
    """A tiny llama student, its f16 GGUF, traces, and the matrix computed on them."""
    tmp = tmp_path_factory.mktemp("imatrix")
    folder = student("llama")
    config = check_model_folder(folder)
    facts = model_facts(folder, config)
    traces = write_traces(tmp / "traces.jsonl", 40)
    calibration = resolve_calibration(str(traces), str(folder), folder, 1024, 256, 0.1, 4096)
    matrix = compute_imatrix(folder, calibration.texts, facts, str(traces), threads=1, batch_tokens=300)
    path = tmp / "m.imatrix.gguf"
    write_imatrix(path, matrix, facts.arch)
    f16 = tmp / "m-f16.gguf"
    write_gguf(folder, config, facts, f16, "f16", "m")
    return {"folder": folder, "facts": facts, "traces": traces, "calibration": calibration,
            "matrix": matrix, "path": path, "f16": f16, "tmp": tmp}


def test_file_is_in_llama_cpp_imatrix_format(calibrated):
    reader = gguf.GGUFReader(calibrated["path"])
    assert reader.get_field("general.type").contents() == "imatrix"
    assert reader.get_field("imatrix.datasets").contents() == [str(calibrated["traces"])]
    texts = calibrated["calibration"].texts
    tokens = sum(len(t) for t in texts)
    assert reader.get_field("imatrix.chunk_count").contents() == len(texts)
    assert reader.get_field("imatrix.chunk_size").contents() == round(tokens / len(texts))
    _, model_tensors = read_header(calibrated["f16"])
    matrices = {t["name"]: t["shape"] for t in model_tensors if t["name"].startswith("blk.") and len(t["shape"]) == 2}
    assert len(matrices) == 2 * 7  # q, k, v, o, gate, up, down per block
    stored = {t.name: t for t in reader.tensors}
    assert set(stored) == {f"{n}{suffix}" for n in matrices for suffix in (".in_sum2", ".counts")}
    for name, shape in matrices.items():
        sums, counts = stored[f"{name}.in_sum2"], stored[f"{name}.counts"]
        assert [int(d) for d in sums.shape] == [shape[0], 1]  # ggml order: columns, matrices
        assert [int(d) for d in counts.shape] == [1, 1]
        assert sums.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
        assert float(np.asarray(counts.data).reshape(-1)[0]) == tokens
        assert (np.asarray(sums.data) > 0).all()


def _direct_sums(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inputs of every block matrix of a llama model, computed by hand from its weights
    (attention written out, no hooks), summed as squares over positions."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    m, config = model.model, model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    n = ids.shape[0]
    h = m.embed_tokens(ids[None])
    cos, sin = m.rotary_emb(h, torch.arange(n)[None])
    causal = torch.full((n, n), float("-inf")).triu(1)
    out = {}
    for i, layer in enumerate(m.layers):
        a = layer.input_layernorm(h)
        att = layer.self_attn
        q = att.q_proj(a).view(1, n, heads, head_dim).transpose(1, 2)
        k = att.k_proj(a).view(1, n, kv_heads, head_dim).transpose(1, 2)
        v = att.v_proj(a).view(1, n, kv_heads, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, heads // kv_heads)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1)
        o = (weights @ v).transpose(1, 2).reshape(1, n, -1)
        h = h + att.o_proj(o)
        b = layer.post_attention_layernorm(h)
        g = layer.mlp.act_fn(layer.mlp.gate_proj(b)) * layer.mlp.up_proj(b)
        h = h + layer.mlp.down_proj(g)
        for name, x in (("attn_q", a), ("attn_k", a), ("attn_v", a), ("attn_output", o), ("ffn_gate", b),
                        ("ffn_up", b), ("ffn_down", g)):
            out[f"blk.{i}.{name}.weight"] = x[0].double().square().sum(0)
    out["_last"] = m.norm(h)[0]
    return out


def test_values_equal_a_direct_computation(calibrated):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(calibrated["folder"], dtype=torch.float32).eval()
    texts = calibrated["calibration"].texts
    assert len({len(t) for t in texts}) > 5  # batches of unequal lengths: padding is exercised
    want: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for ids in texts:
            ids = torch.as_tensor(ids, dtype=torch.long)
            direct = _direct_sums(model, ids)
            # the hand-written forward pass is the model's own
            torch.testing.assert_close(direct.pop("_last"), model.model(ids[None]).last_hidden_state[0],
                                       rtol=1e-4, atol=1e-4)
            for name, value in direct.items():
                want[name] = want.get(name, 0) + value
    matrix = read_imatrix(calibrated["path"])
    assert set(matrix.sums) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(matrix.sums[name][0], value.numpy(), rtol=1e-4, err_msg=name)
        assert matrix.counts[name].tolist() == [sum(len(t) for t in texts)]
    means = matrix.means()
    name = "blk.1.ffn_down.weight"
    np.testing.assert_allclose(means[name], want[name].numpy() / sum(len(t) for t in texts), rtol=1e-4)


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(path).tensors}


def test_calibrated_quant_differs_from_uncalibrated_and_both_load(calibrated):
    import llama_cpp

    tmp = calibrated["tmp"]
    plain, with_matrix = tmp / "plain-q4_0.gguf", tmp / "calibrated-q4_0.gguf"
    quantize(calibrated["f16"], plain, "q4_0", 1, tmp / "q.log")
    quantize(calibrated["f16"], with_matrix, "q4_0", 1, tmp / "q.log", imatrix=calibrated["path"])
    a, b = _tensor_bytes(plain), _tensor_bytes(with_matrix)
    assert a.keys() == b.keys()
    differing = [n for n in a if a[n] != b[n]]
    assert differing and all(n.startswith("blk.") for n in differing)
    assert "blk.0.attn_q.weight" in differing
    metadata, _ = read_header(with_matrix)
    assert metadata["quantize.imatrix.entries_count"] == 14
    assert metadata["quantize.imatrix.chunks_count"] == len(calibrated["calibration"].texts)
    assert "quantize.imatrix.entries_count" not in read_header(plain)[0]
    tokens = calibrated["calibration"].heldout[0].tolist()
    for path in (plain, with_matrix):
        llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, n_threads=1, verbose=False)
        llm.eval(tokens)
        assert np.isfinite(np.array(llm.scores[: len(tokens)])).all()
        llm.close()


def test_imatrix_type_on_a_model_with_256_wide_rows(tmp_path):
    """iq3_xxs needs the matrix, and with 256-wide rows (the demo student base) llama.cpp really
    writes IQ3_XXS tensors with it."""
    folder = REPO / "data" / "models" / "demo-student-base"
    config = check_model_folder(folder)
    facts = model_facts(folder, config)
    f16 = tmp_path / "f16.gguf"
    write_gguf(folder, config, facts, f16, "f16", "m")
    calibration = resolve_calibration(str(write_traces(tmp_path / "t.jsonl", 30)), str(folder), folder, 512, 256, 0.1, 512)
    write_imatrix(tmp_path / "m.imatrix.gguf", compute_imatrix(folder, calibration.texts, facts, "t", threads=1), facts.arch)
    with pytest.raises(UserError, match="iq3_xxs needs an importance matrix"):
        quantize(f16, tmp_path / "no.gguf", "iq3_xxs", 1, tmp_path / "q.log")
    quantize(f16, tmp_path / "iq3.gguf", "iq3_xxs", 1, tmp_path / "q.log", imatrix=tmp_path / "m.imatrix.gguf")
    types = {t["type"] for t in read_header(tmp_path / "iq3.gguf")[1]}
    assert "IQ3_XXS" in types


def test_export_defaults_to_the_traces_in_train_json_and_compares(student, tmp_path):
    folder = tmp_path / "trained"
    shutil.copytree(student("qwen2"), folder)
    traces = write_traces(tmp_path / "traces.jsonl", 40)
    (folder / "train.json").write_text(json.dumps({"config": {"traces": str(traces), "prompt_template": "r1"}}))
    out = tmp_path / "export"
    result = export("--model", str(folder), "--out", str(out), "--gguf", "q8_0,q4_0,iq3_xxs", "--imatrix-compare")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    calibration = manifest["calibration"]
    assert calibration["source"] == str(traces) and calibration["kind"] == "traces"
    assert calibration["texts"] + calibration["heldout_texts"] == 40 and calibration["heldout_texts"] >= 1
    assert calibration["tokens"] > 0 and calibration["imatrix"]["tokens"] == calibration["tokens"]
    from distill.core.io import sha256_path
    assert calibration["imatrix"]["sha256"] == sha256_path(out / "model.imatrix.gguf")
    arts = {a["quant"]: a for a in manifest["artifacts"]}
    for quant in ("q8_0", "q4_0"):
        measured = arts[quant]["validation"]["vs_f16_heldout"]
        assert measured["tokens"] == calibration["heldout_tokens"] and 0 <= measured["mean_kld"] < 1
        assert arts[quant]["imatrix"] is True
        without = arts[quant]["uncalibrated"]["validation"]
        assert without["loads"] and "vs_f16_heldout" in without
    assert "uncalibrated" not in arts["iq3_xxs"]  # llama.cpp does not allow it without the matrix
    assert (out / "kld_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["plot"] == "kld_vs_size.png" and "kld_vs_size.png" in (out / "README.md").read_text()


def test_types_that_need_a_matrix_exit_2_without_one(student, tmp_path):
    model = str(student("qwen2"))
    assert "iq3_xxs needs an importance matrix and there is none (--imatrix none)" in \
        fails_cleanly(tmp_path, "--model", model, "--gguf", "iq3_xxs", "--imatrix", "none")
    assert "iq2_xs, q2_k_s need an importance matrix and there is none (no --imatrix and no traces" in \
        fails_cleanly(tmp_path, "--model", model, "--gguf", "q4_0,iq2_xs,q2_k_s")


def test_bad_calibration_sources(student, calibrated, tmp_path):
    model = str(student("qwen2"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "holds no text to calibrate on" in fails_cleanly(tmp_path, "--model", model, "--gguf", "q4_0",
                                                            "--imatrix", str(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "  "}\n{"text": ""}\n')
    assert "holds no text to calibrate on" in fails_cleanly(tmp_path, "--model", model, "--gguf", "q4_0",
                                                            "--imatrix", str(blank))
    long_text = tmp_path / "long.jsonl"
    long_text.write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": "seven apples " * 400}) + "\n")
    message = fails_cleanly(tmp_path, "--model", model, "--gguf", "q4_0", "--imatrix", str(long_text),
                            "--context-length", "256")
    assert f"{long_text}: row 2: the text is" in message and "longer than the context length 256" in message
    long_traces = write_traces(tmp_path / "long-traces.jsonl", 5, repeat=30)
    assert "all 5 traces are longer than the context length 128" in fails_cleanly(
        tmp_path, "--model", model, "--gguf", "q4_0", "--imatrix", str(long_traces), "--context-length", "128")
    assert "no such file or folder" in fails_cleanly(tmp_path, "--model", model, "--gguf", "q4_0",
                                                     "--imatrix", str(tmp_path / "nope.jsonl"))
    # a model file is not a matrix, and another model's matrix does not fit this one
    assert "not an importance matrix (general.type is 'model'" in fails_cleanly(
        tmp_path, "--model", model, "--gguf", "q4_0", "--imatrix", str(calibrated["f16"]))
    assert "matches no tensor of this model" in fails_cleanly(
        tmp_path, "--model", str(student("qwen2", layers=1)), "--gguf", "q4_0",
        "--imatrix", str(calibrated["path"]))


def test_given_imatrix_file_is_used_and_shipped(student, calibrated, tmp_path):
    out = tmp_path / "export"
    result = export("--model", str(calibrated["folder"]), "--out", str(out), "--gguf", "q4_0",
                    "--imatrix", str(calibrated["path"]))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["kind"] == "imatrix" and manifest["calibration"]["heldout_texts"] == 0
    assert "no held-out texts" in manifest["calibration"]["notes"][0]
    assert (out / "model.imatrix.gguf").read_bytes() == calibrated["path"].read_bytes()
    assert read_header(out / "model-q4_0.gguf")[0]["quantize.imatrix.entries_count"] == 14


def _entry(quant: str, size: int, kld: float, fits: bool = True) -> dict:
    return {"format": "gguf", "quant": quant, "path": f"m-{quant}.gguf", "bytes": size, "fit": {"fits": fits},
            "validation": {"vs_f16": {"mean_kld": 9.0}, "vs_f16_heldout": {"mean_kld": kld}}}


def test_profile_chooses_the_lowest_kld_type_that_fits():
    pi4 = load_profile("rpi4-4gb")
    assert pi4.choose == "lowest_kld" and {"q4_k_m", "q4_0", "iq4_xs", "q3_k_m", "iq3_m"} <= set(pi4.gguf)
    entries = [_entry("q4_k_m", 1900, 0.05, fits=False), _entry("q4_0", 1800, 0.09), _entry("iq4_xs", 1700, 0.07),
               _entry("q3_k_m", 1500, 0.12)]
    chosen = choose_gguf(entries, pi4)
    assert chosen["quant"] == "iq4_xs" and chosen["path"] == "m-iq4_xs.gguf"
    assert "0.0700 on the held-out calibration texts" in chosen["reason"] and "q4_k_m" not in chosen["reason"]
    first = Profile(name="p", description="", memory_budget=1, context_length=1, threads=1, gguf=["q4_0", "iq4_xs"])
    assert choose_gguf(entries, first)["quant"] == "q4_0"
