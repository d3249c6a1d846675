"""`--fit SIZE` and `fit: true` profiles: per-tensor llama.cpp types chosen to fit a budget
(export/fit.py), the exact size prediction they rest on, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.core.errors import UserError
from distill.export.fit import allocate
from distill.export.fit_types import (check_overrides, data_bytes, metadata_bytes, parse_overrides, pinned_types,
                                      written_type)
from distill.export.gguf_info import read_header
from distill.export.quantize import quantize
from tests.export.test_bad_inputs import _fails_cleanly

runner = CliRunner()
HERE = Path(__file__).parent


def test_written_type_follows_llama_cpps_fallback():
    assert written_type("q4_k", 1536).name == "Q4_K"
    assert written_type("q4_k", 576).name == "Q5_0"      # 576 is no multiple of 256
    assert written_type("q6_k", 576).name == "Q8_0"
    assert written_type("q3_k", 64).name == "Q4_0"
    assert written_type("iq4_nl", 576).name == "IQ4_NL"  # 32-wide blocks
    assert written_type("q4_0", 48).name == "F16"         # no block of 32 fits 48... of the fallback either


def test_allocation_spends_the_budget_where_it_saves_most_error():
    shapes = {"a": [256, 4], "b": [256, 4]}
    # b loses far more at 4 bits than a: the one upgrade that fits goes to b
    errors = {"a": {"Q4_K": 1.0, "Q8_0": 0.1}, "b": {"Q4_K": 10.0, "Q8_0": 0.1}}
    q4, q8 = 4 * 144, 4 * 272
    types, spent = allocate(shapes, errors, {}, 2 * q4 + (q8 - q4), allow_f16=False)
    assert types == {"a": "Q4_K", "b": "Q8_0"} and spent == q4 + q8
    types, _ = allocate(shapes, errors, {}, 2 * q8, allow_f16=False)
    assert types == {"a": "Q8_0", "b": "Q8_0"}
    assert allocate(shapes, errors, {"b": "Q4_K"}, 2 * q8, allow_f16=False)[0]["b"] == "Q4_K"  # pinned
    with pytest.raises(UserError, match="cheapest types need"):
        allocate(shapes, errors, {}, q4, allow_f16=False)


def test_overrides_are_parsed_and_must_name_a_tensor():
    overrides = parse_overrides([r"attn_v=q8_0", r"^blk\.0\.ffn_down\.weight$=Q6_K"])
    assert overrides == [("attn_v", "q8_0"), (r"^blk\.0\.ffn_down\.weight$", "q6_k")]
    names = ["blk.0.attn_v.weight", "blk.0.ffn_down.weight"]
    check_overrides(overrides, names)
    assert pinned_types(overrides, {n: [576, 64] for n in names}) == {n: "Q8_0" for n in names}  # q6_k falls back
    with pytest.raises(UserError, match="'attn_x=q8_0' names no tensor"):
        check_overrides(parse_overrides(["attn_x=q8_0"]), names)
    for bad, why in (("attn_v", "not PATTERN=TYPE"), ("attn_v=q9", "unknown tensor type"),
                     ("blk.(0=q8_0", "not a regular expression")):
        with pytest.raises(UserError, match=why):
            parse_overrides([bad])


def test_size_is_predicted_to_the_byte(gguf_files, tmp_path):
    """The whole search rests on this: the header of one quantized file and the types give the
    size of any other assignment exactly, fallbacks included."""
    files = gguf_files("llama")
    _, tensors = read_header(files["q4_k_m"])
    meta = metadata_bytes(files["q4_k_m"], tensors)
    names = [t["name"] for t in tensors if len(t["shape"]) >= 2]
    wanted = {n: ("q8_0", "q4_k", "q6_k", "iq4_nl")[i % 4] for i, n in enumerate(names)}
    out = tmp_path / "mixed.gguf"
    quantize(files["f16"], out, "q4_k_m", 1, tmp_path / "q.log", None,
             [(f"^{n.replace('.', chr(92) + '.')}$", k) for n, k in wanted.items()])
    written = {t["name"]: t["type"] for t in read_header(out)[1]}
    shapes = {t["name"]: t["shape"] for t in tensors}
    assert {n: written[n] for n in names} == {n: written_type(k, shapes[n][0]).name for n, k in wanted.items()}
    assert out.stat().st_size == meta + data_bytes(read_header(out)[1], {})
    assert out.stat().st_size == meta + data_bytes(tensors, {n: written[n] for n in names})


def test_fit_alone_writes_one_file_that_fits(student, tmp_path):
    out = tmp_path / "export"
    result = runner.invoke(cli.app, ["export", "--quiet", "--model", str(student("qwen2")), "--out", str(out),
                                     "--fit", "107kB", "--threads", "1", "--tensor-type", "attn_k=q8_0"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]  # no default types, no ONNX
    assert entry["path"] == "model-fit.gguf" and entry["quant"] == "fit" and entry["validation"]["passed"]
    search = entry["search"]
    assert entry["bytes"] == search["bytes"] <= search["budget"] == 107_000
    types = {t["name"]: t["type"] for t in read_header(out / "model-fit.gguf")[1]}
    assert all(types[n] == t["type"] for n, t in search["tensors"].items())
    assert all(types[n] == "Q8_0" for n in types if n.endswith(".attn_k.weight"))  # pinned by --tensor-type
    lower, upper = search["neighbours"]["lower"], search["neighbours"]["upper"]
    sizes = search["neighbours"]["bytes"]
    assert sizes[lower] <= search["budget"] < sizes[upper]
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "export.json", "kld_vs_size.png", "manifest.json",
                                                     "model-fit.gguf"]
    assert "model-fit.gguf" in (out / "Modelfile").read_text()


@pytest.mark.parametrize("args,expected", [
    (["--fit", "10kB"], "needs at least"),
    (["--fit", "lots"], "field 'fit': expected a size like 6GiB or 2500MB, got 'lots'"),
    (["--fit", "0"], "field 'fit': expected a size"),
    (["--fit", "1MB", "--onnx", "int4"], "--onnx without --gguf asks for ONNX only"),
    (["--fit", "1MB", "--tensor-type", "attn_x=q8_0"], "'attn_x=q8_0' names no tensor of this model"),
    (["--gguf", "q4_0", "--tensor-type", "ffn_up=q9_k"], "unknown tensor type 'q9_k'"),
])
def test_bad_fit_requests(student, tmp_path, args, expected):
    assert expected in _fails_cleanly(tmp_path, "--model", str(student("qwen2")), *args)


def test_profile_budget_below_the_smallest_file(student, tmp_path):
    from distill.export.profiles import kv_cache_bytes, runtime_overhead_bytes
    from distill.export.source import check_model_folder, model_facts
    facts = model_facts(student("qwen2"), check_model_folder(student("qwen2")))
    room = 20_000  # bytes left for the file: less than any file of this model
    budget = kv_cache_bytes(facts, 512, "gguf") + runtime_overhead_bytes(facts, 512) + room
    profile = tmp_path / "watch.yaml"
    profile.write_text(f"memory_budget: {budget}\ncontext_length: 512\nfit: true\n")
    message = _fails_cleanly(tmp_path, "--model", str(student("qwen2")), "--target", str(profile))
    assert "target 'watch'" in message and "of weights + KV cache" in message


@pytest.mark.slow
def test_fit_profile_ships_a_file_that_beats_q4_k_m(smollm2_dir, gsm8k_train, tmp_path):
    """The done-when of issue 25: a `fit: true` profile sized for SmolLM2 ships a fitted file that
    fits and measures a lower KL divergence than q4_k_m on held-out GSM8K traces, and the manifest
    shows the tensor types and the neighbours' figures."""
    traces = tmp_path / "traces.jsonl"
    with open(gsm8k_train, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    traces.write_text("".join(json.dumps({"problem": r["question"], "reasoning": r["answer"].rpartition("####")[0],
                                          "answer": f"The answer is \\boxed{{{r['answer'].rpartition('####')[2].strip()}}}."})
                              + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "export"
    result = runner.invoke(cli.app, [
        "export", "--quiet", "--model", str(smollm2_dir), "--out", str(out), "--target",
        str(HERE / "profiles" / "smollm2-fit.yaml"), "--imatrix", str(traces), "--imatrix-texts", "32",
        "--imatrix-heldout", "0.2", "--imatrix-heldout-tokens", "1024", "--threads", "2", "--name", "smol"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert entry["path"] == "smol-fit.gguf" and entry["fit"]["fits"]
    search = entry["search"]
    assert search["neighbours"]["lower"] == "q4_k_m" and search["neighbours"]["upper"] == "q5_k_m"
    measured = search["neighbours"]["measured"]
    fitted = entry["validation"]["vs_f16_heldout"]["mean_kld"]
    assert fitted < measured["q4_k_m"]["mean_kld"], (fitted, measured)
    assert len(search["tensors"]) == 211 and all(set(t) == {"type", "errors"} for t in search["tensors"].values())
    assert entry["bytes"] <= search["budget"] < measured["q5_k_m"]["bytes"]
