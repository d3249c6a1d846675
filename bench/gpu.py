"""Training at real scale on one GPU (at least 40 GB), in one command of at most 5 minutes: a
Qwen2.5-1.5B-shaped student (random weights; Qwen2's real 151,936-token vocabulary rebuilt from
llama.cpp's ggml-vocab-qwen2.gguf by bench/gpu_prepare.py; nothing downloaded), bf16, traces
packed 4 x 8,192 tokens a step.

- `distill train`, full and LoRA r = 64: tokens/s, torch.cuda.max_memory_allocated, and that
  peak against `distill train`'s memory estimate (python -m distill.train.estimate), as a ratio;
- TRL's SFTTrainer on the same steps and settings (and with Liger's kernels where liger-kernel
  is importable): ours against theirs, tokens/s and peak memory;
- one on-policy step (8 prompts x 4 samples x 512 tokens, a local teacher of the same shape):
  seconds in sampling, in the teacher's scoring and in the update.
The GGUF export of that student is measured on a CPU machine instead (`--cpu-export`: llama-cpp-
python there, not on the GPU): bench/bench_export.py on a folder of this shape.

Each part runs in a fresh process (bench/gpu_parts.py, bench/gpu_train.py); the JSON file is
rewritten after each, so a timeout still leaves the figures so far. Parts that would start with
less than a minute of --budget left are skipped and said so. Without a GPU it exits 2 with one
line; `--smoke` runs the same code at tiny sizes on a CPU (the test suite does, so that this
script cannot rot). On the lent GPU machine, bench/gpu_run.sh installs the carried wheels first.

    python bench/gpu.py [--out gpu.json] [--budget 290] [--only ours-full,trl-full,...] [--smoke]
    python bench/gpu.py --cpu-export [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gpu_parts import DEMO_TOKENIZER, REPO, SMOKE, real_sizes, unpack_tokenizer, use_repo_package  # noqa: E402

CARRIED_TOKENIZER = REPO / ".gpu-bench" / "qwen2-tokenizer"
PARTS = ("build", "ours-full", "ours-lora", "trl-full", "trl-lora", "onpolicy", "trl-full-liger", "trl-lora-liger")
NOT_ON_THE_GPU = ("gguf", "llama_cpp", "math_verify", "openai", "onnxruntime_genai", "flash_attn")
MIN_PART_SECONDS = 60  # a part needs the model loaded and a few steps; less than this is not worth starting


def run_part(name: str, work: Path, smoke: bool) -> dict:
    """In the part's own process: run it and return its figures."""
    use_repo_package()
    import torch
    sizes = SMOKE if smoke else real_sizes()
    started = time.perf_counter()
    if name == "build":
        from gpu_parts import build
        result = build(work, sizes, work / "tokenizer", torch.cuda.is_available())
    else:
        import gpu_train
        if name.startswith("ours-"):
            result = gpu_train.ours(work, sizes, lora=name.endswith("lora"))
        elif name.startswith("trl-"):
            result = gpu_train.trl(work, sizes, lora="lora" in name, liger=name.endswith("liger"))
        else:
            result = gpu_train.onpolicy(work, sizes)
    # What the GPU image lacks must stay out of these parts' imports (the test asserts it).
    absent = sorted({m.split(".")[0] for m in sys.modules} & set(NOT_ON_THE_GPU))
    return {**result, "part_seconds": round(time.perf_counter() - started, 1), "imported_absent_modules": absent}


def environment(smoke: bool) -> dict:
    import importlib.metadata as md

    import torch
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "liger-kernel", "tokenizers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.is_available()
    return {"gpu": torch.cuda.get_device_name(0) if gpu else None,
            "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if gpu else None,
            "python": platform.python_version(), "versions": versions, "smoke": smoke,
            "sizes": asdict(SMOKE if smoke else real_sizes())}


def spawn(name: str, work: Path, smoke: bool, seconds: float) -> dict:
    """Run one part in a fresh process with `seconds` to finish; its figures or what went wrong."""
    log = work / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", str(work)]
    try:
        with open(log, "wb") as f:
            proc = subprocess.run(command + (["--smoke"] if smoke else []), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within the {seconds:.0f} s left of the budget"}
    result = work / f"{name}.json"
    if proc.returncode == 0 and result.is_file():
        return json.loads(result.read_text())
    tail = log.read_text(errors="replace").strip().splitlines()[-12:]
    return {"error": f"exit {proc.returncode}", "log_tail": tail}


def gib(n) -> str:
    return f"{n / 2 ** 30:.1f}" if n else "-"


def table(results: dict) -> str:
    """A short Markdown table of the figures."""
    lines = ["| part | tokens/s | peak GiB | estimate GiB | peak / estimate | ours / TRL: speed, memory |",
             "|---|---|---|---|---|---|"]
    for name in ("ours-full", "ours-lora", "trl-full", "trl-lora", "trl-full-liger", "trl-lora-liger"):
        r = results.get(name)
        if not r:
            continue
        if "tokens_per_second" not in r:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        versus = ""
        ours = results.get("ours-" + name.split("-")[1], {})
        if name.startswith("trl") and ours.get("tokens_per_second") and r.get("tokens_per_second"):
            speed = ours["tokens_per_second"] / r["tokens_per_second"]
            mem = (f"{ours['peak_allocated_bytes'] / r['peak_allocated_bytes']:.2f}x"
                   if ours.get("peak_allocated_bytes") and r.get("peak_allocated_bytes") else "-")
            versus = f"{speed:.2f}x, {mem}"
        lines.append(f"| {name} | {r['tokens_per_second']} | {gib(r.get('peak_allocated_bytes'))} | "
                     f"{gib(r.get('estimate_bytes'))} | {r.get('peak_over_estimate', '-')} | {versus} |")
    op = results.get("onpolicy")
    if op and "last_step" in op:
        s = op["last_step"]
        lines.append(f"\non-policy step ({op['prompts']} prompts x {op['samples_per_prompt']} samples x "
                     f"{op['max_new_tokens']} tokens): {s['seconds']:.1f} s = sampling {s.get('sampling_seconds', 0):.1f}"
                     f" + scoring {s.get('scoring_seconds', 0):.1f} + update {s['update_seconds']:.1f}; "
                     f"{op['sampled_tokens_per_second']} sampled tokens/s; peak {gib(op.get('peak_allocated_bytes'))} GiB "
                     f"(estimate {gib(op.get('estimate_bytes'))} GiB)")
    elif op:
        lines.append(f"\non-policy step: {op.get('skipped') or op.get('error')}")
    return "\n".join(lines)


def cpu_export(repeat: int) -> int:
    """The GGUF export of the student's shape with validation against llama.cpp's converter, on
    this CPU machine (bf16 safetensors, as `distill train` saves on a GPU)."""
    use_repo_package()
    from gpu_parts import build

    from tests.conftest import CACHE
    work = CACHE / "bench-gpu-student-1.5b"
    if not list((work / "student").glob("*.safetensors")):
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = unpack_tokenizer(CARRIED_TOKENIZER, work / "tokenizer")
        import torch
        build(work, real_sizes(), tokenizer, gpu=False, dtype=torch.bfloat16, teacher=False)
    return subprocess.call([sys.executable, str(BENCH / "bench_export.py"), "--model", str(work / "student"),
                            "--repeat", str(repeat), "--only-ratio"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-bench.json"), help="the JSON file, rewritten after each part")
    parser.add_argument("--budget", type=float, default=290, help="seconds for all parts together")
    parser.add_argument("--only", default=None, help=f"comma-separated parts among {', '.join(PARTS[1:])}")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder (default: .gpu-bench/qwen2-tokenizer; --smoke: the demo tokenizer)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: checks the code, measures nothing")
    parser.add_argument("--cpu-export", action="store_true", help="the GGUF export of the student's shape, on a CPU")
    parser.add_argument("--repeat", type=int, default=1, help="--cpu-export: rounds of bench_export.py")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        result = run_part(args.part, args.work, args.smoke)
        (args.work / f"{args.part}.json").write_text(json.dumps(result, indent=1))
        return 0
    if args.cpu_export:
        return cpu_export(args.repeat)

    import gpu_train
    import torch
    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU here; run it on a GPU machine (bench/gpu_run.sh), or --smoke on a CPU",
              file=sys.stderr)
        return 2
    tokenizer = args.tokenizer or (DEMO_TOKENIZER if args.smoke else CARRIED_TOKENIZER)
    if not tokenizer.is_dir():
        print(f"bench/gpu.py: {tokenizer}: no tokenizer; run python bench/gpu_prepare.py first", file=sys.stderr)
        return 2
    wanted = [p for p in PARTS[1:] if args.only is None or p in args.only.split(",")]
    started = time.perf_counter()
    results = {"environment": environment(args.smoke), "budget_seconds": args.budget}

    def save() -> None:
        results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(results, indent=1) + "\n")

    save()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        unpack_tokenizer(tokenizer, work / "tokenizer")
        for name in ["build", *wanted]:
            left = args.budget - (time.perf_counter() - started)
            why_not = gpu_train.liger_usable() if name.endswith("liger") else None
            if "error" in results.get("build", {}):
                results[name] = {"skipped": "the build failed"}
            elif left < (MIN_PART_SECONDS if not args.smoke else 1):
                results[name] = {"skipped": f"{left:.0f} s of the budget left"}
            elif why_not:
                results[name] = {"skipped": why_not}
            else:
                results[name] = spawn(name, work, args.smoke, left)
            print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k not in ('steps', 'estimate_parts', 'shape')})}",
                  flush=True)
            save()
    print()
    print(table(results))
    print(f"\n{results['environment']['gpu'] or 'CPU (smoke)'}; {results['elapsed_seconds']} s; figures in {args.out}")
    failed = [n for n, r in results.items() if isinstance(r, dict) and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
