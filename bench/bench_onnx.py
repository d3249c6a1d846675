"""ONNX int4 settings on CPU, measured in one run: KL divergence and top-1 agreement against the
source model (fp32, Hugging Face) on held-out text, size on disk, and single-stream decode speed
(onnxruntime-genai, 2 threads, greedy, 128 tokens after the prompt, the median of rounds that take
every variant in turn so that a busy machine slows them alike). What each variant's graph holds is
read from the graph (export/onnx_graph.py), not from the option's name.

Models: the demo student (`--demo-student DIR`, default /tmp/demo0/student or demo-run/student)
on demo-task text, and SmolLM2-135M-Instruct (real weights) on GSM8K training problems.

    python bench/bench_onnx.py [--model demo|smollm2|both] [--rounds 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name: (our precision, block size, accuracy level, int8-head algorithm when not ours)
VARIANTS = {
    "fp32": ("fp32", 32, 4, None),
    "int4 (defaults: block 32, level 4)": ("int4", 32, 4, None),
    "int4 block 64": ("int4", 64, 4, None),
    "int4 block 128": ("int4", 128, 4, None),
    "int4 level 1": ("int4", 32, 1, None),
    "int4-int8head (k_quant_last)": ("int4-int8head", 32, 4, None),
    "int4-int8head block 64": ("int4-int8head", 64, 4, None),
    "int4 + int8 head by rtn_last": ("int4-int8head", 32, 4, "rtn_last"),
}
NEW_TOKENS = 128


def build(model: Path, work: Path) -> dict[str, Path]:
    from distill.export import onnx_export
    built = {}
    for name, (precision, block, level, algo) in VARIANTS.items():
        out = work / name.replace(" ", "_").replace(":", "").replace("(", "").replace(")", "").replace(",", "")
        onnx_export.INT8_HEAD_ALGO = algo or "k_quant_last"
        try:
            onnx_export.build_onnx(model, out, precision, work, work / "build.log", 1024, False, block, level)
        except Exception as e:  # noqa: BLE001 - a variant the builder cannot make is a finding
            print(f"{name}: the builder failed: {str(e)[:200]}", flush=True)
            continue
        finally:
            onnx_export.INT8_HEAD_ALGO = "k_quant_last"
        genai = json.loads((out / "genai_config.json").read_text())
        genai["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = 2
        (out / "genai_config.json").write_text(json.dumps(genai, indent=2))
        built[name] = out
    return built


def measure(model: Path, text: str, prompt: str, built: dict[str, Path], rounds: int) -> dict[str, dict]:
    import numpy as np
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.backends.logits import kl_and_top1, onnx_logits, torch_logits
    from distill.export.onnx_graph import describe_graph

    torch.set_num_threads(2)
    tokens = AutoTokenizer.from_pretrained(model)(text)["input_ids"][:512]
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    reference = torch_logits(hf, tokens)
    del hf
    results, loaded = {}, {}
    for name, folder in built.items():
        graph = describe_graph(folder)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))
        m = og.Model(str(folder))
        kl, top1 = kl_and_top1(reference, onnx_logits(m, tokens))
        results[name] = {"kl": kl, "top1": top1, "bytes": size, "tok_s": [], "graph": graph}
        loaded[name] = (m, og.Tokenizer(m))
    for _ in range(rounds):
        for name, (m, tokenizer) in loaded.items():
            ids = tokenizer.encode(prompt)
            params = og.GeneratorParams(m)
            params.set_search_options(max_length=len(ids) + NEW_TOKENS, min_length=len(ids) + NEW_TOKENS,
                                      do_sample=False)
            generator = og.Generator(m, params)
            generator.append_tokens(np.array([ids], dtype=np.int32))  # the prompt is not timed
            n, started = 0, time.perf_counter()
            while not generator.is_done():
                generator.generate_next_token()
                n += 1
            results[name]["tok_s"].append(n / (time.perf_counter() - started))
            del generator
    for r in results.values():
        r["tok_s_median"] = statistics.median(r["tok_s"])
    return results


def table(title: str, results: dict[str, dict], tokens_note: str) -> None:
    base = results.get("int4 (defaults: block 32, level 4)")
    print(f"\n## {title}\n\n{tokens_note}\n")
    print("| variant | MatMulNBits (bits, block, level) | head | embedding | MB | decode tok/s (median) | vs int4 default "
          "| KL from source | top-1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        g = r["graph"]
        configs = ", ".join(f"{b}b/{bs}/{lvl}" for b, bs, lvl in g["matmulnbits_configs"]) or "-"
        head = f"{g['head']['op_type']} {g['head']['bits']}b" if g["head"] else "-"
        emb = f"{g['embedding']['op_type']} {g['embedding']['bits']}b" if g["embedding"] else "-"
        ratio = f"{r['tok_s_median'] / base['tok_s_median']:.2f}x" if base else "-"
        print(f"| {name} | {configs} | {head} | {emb} | {r['bytes'] / 1e6:.1f} | {r['tok_s_median']:.0f} | {ratio} | "
              f"{r['kl']:.4f} | {r['top1']:.1%} |")


def demo_text() -> tuple[str, str]:
    from distill.core.demo_task import generate
    problems = generate("test", 40)
    return " ".join(f"{p['question']} {p['reasoning']} The answer is {p['answer']}." for p in problems), \
        problems[0]["question"]


def gsm8k_text() -> tuple[str, str]:
    from tests.conftest import SHARED_BENCHMARKS
    rows = [json.loads(line) for line in open(SHARED_BENCHMARKS / "gsm8k_train.jsonl", encoding="utf-8")][6000:6012]
    return " ".join(f"{r['question']} {r['answer']}" for r in rows), rows[0]["question"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "smollm2", "both"), default="both")
    parser.add_argument("--demo-student", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    print(f"load: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = []
        if args.model in ("demo", "both"):
            student = args.demo_student or next(p for p in (Path("/tmp/demo0/student"), REPO / "demo-run" / "student",
                                                            REPO / "data" / "models" / "demo-student-base")
                                                if (p / "config.json").is_file())
            models.append((f"demo student ({student})", student, *demo_text()))
        if args.model in ("smollm2", "both"):
            from tests.conftest import smollm2_folder
            models.append(("SmolLM2-135M-Instruct", smollm2_folder(), *gsm8k_text()))
        for title, model, text, prompt in models:
            folder = work / title.split()[0]
            folder.mkdir(exist_ok=True)
            results = measure(model, text, prompt, build(model, folder), args.rounds)
            table(title, results, f"KL and top-1 on {min(512, len(text))}+ held-out tokens against the fp32 HF model; "
                  f"decode: {args.rounds} rounds of {NEW_TOKENS} tokens, 2 threads")
            (folder / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nload at the end: {open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
