"""Device profiles and the memory check (weights + KV cache at the context + runtime buffers)."""

from __future__ import annotations

import pytest

from distill.core.errors import UserError
from distill.export.profiles import (available_profiles, fit_report, kv_cache_bytes, load_profile,
                             parse_bytes, require_fit)
from distill.export.source import ModelFacts

# Qwen2.5-1.5B-Instruct's shape
QWEN25_15B = ModelFacts(arch="qwen2", model_type="qwen2", layers=28, hidden=1536, heads=12, kv_heads=2,
                        head_dim=128, vocab_size=151936, max_positions=32768, parameters=1_543_714_304,
                        tied=True, dtype="bf16")


def test_bundled_profiles_load():
    assert {"rpi5-8gb", "rpi4-4gb", "laptop-cpu"} <= set(available_profiles())
    pi5 = load_profile("rpi5-8gb")
    assert pi5.memory_budget == 6 * 1024**3 and pi5.context_length == 4096 and pi5.threads == 4
    assert "q4_k_m" in pi5.gguf and pi5.onnx == ["int4"]
    assert load_profile("rpi4-4gb").memory_budget < load_profile("laptop-cpu").memory_budget


def test_sizes():
    assert parse_bytes("6GiB", "x") == 6 * 1024**3
    assert parse_bytes("2.5 GB", "x") == 2_500_000_000
    assert parse_bytes(1024, "x") == 1024
    with pytest.raises(UserError, match="budget: expected a size"):
        parse_bytes("six gigs", "budget")


def test_kv_cache_is_two_tensors_per_layer_per_position():
    # 2 (K and V) * 28 layers * 2 kv heads * 128 dims * 4096 positions * 2 bytes (f16)
    assert kv_cache_bytes(QWEN25_15B, 4096, "gguf") == 2 * 28 * 2 * 128 * 4096 * 2 == 117_440_512
    assert kv_cache_bytes(QWEN25_15B, 4096, "onnx") == 2 * kv_cache_bytes(QWEN25_15B, 4096, "gguf")


def test_fit_check_accepts_a_q4_on_a_pi5_and_rejects_f16_on_a_pi4():
    pi5, pi4 = load_profile("rpi5-8gb"), load_profile("rpi4-4gb")
    q4 = fit_report(QWEN25_15B, "gguf", 1_100_000_000, pi5, 4096)
    assert q4["fits"] and q4["total"] == q4["weights"] + q4["kv_cache"] + q4["overhead"]
    f16 = fit_report(QWEN25_15B, "gguf", 3_100_000_000, pi4, 2048)
    assert not f16["fits"]
    with pytest.raises(UserError, match="target 'rpi4-4gb': model-f16.gguf needs .* budget is 2.50 GiB"):
        require_fit("model-f16.gguf", f16, pi4)


def test_profile_from_a_file_and_bad_profiles(tmp_path):
    good = tmp_path / "tiny-board.yaml"
    good.write_text("memory_budget: 512MiB\ncontext_length: 512\nformats:\n  gguf: [q4_0]\n")
    profile = load_profile(str(good))
    assert profile.name == "tiny-board" and profile.gguf == ["q4_0"] and profile.onnx == []
    with pytest.raises(UserError, match="unknown device profile 'rpi9'.*rpi5-8gb"):
        load_profile("rpi9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("memory_budget: 1GiB\ncontext_length: 512\nformats:\n  gguf: [q4_x]\n")
    with pytest.raises(UserError, match="unknown GGUF type 'q4_x'"):
        load_profile(str(bad))
    bad.write_text("context_length: 512\n")
    with pytest.raises(UserError, match="'memory_budget' is required"):
        load_profile(str(bad))
