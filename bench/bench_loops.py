"""How often the shipped files loop (eval/failures.py's rule: the sample ran to the token limit and
ends in 3+ copies of one span of 64+ characters), never close their think block, or answer only
inside it: the demo student and SmolLM2-135M-Instruct at f16, q8_0, q4_k_m and q3_k_m, greedy and
at temperature 0.6 (top-p 0.95), each through `distill eval` on the GGUF file.

- The demo student: a finished demo run's export (`--demo-run DIR`, default /tmp/demo0 or
  demo-run/); its q3_k_m is quantized here from its f16 with its importance matrix. Benchmark: the
  demo task's test split, 128 new tokens (as the demo evaluates it).
- SmolLM2: exported here (f16, q8_0, q4_k_m, q3_k_m, calibrated on 120 GSM8K training traces) and
  evaluated on GSM8K training problems 5000-5023 (not among the calibration traces) with the r1
  prompt, 384 new tokens.

    python bench/bench_loops.py [--model demo|smollm2|both] [--samples 4] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TYPES = ("f16", "q8_0", "q4_k_m", "q3_k_m")


def demo_files(run: Path, work: Path, threads: int) -> dict[str, Path]:
    from distill.export.quantize import quantize
    export = run / "export"
    files = {q: next(export.glob(f"*-{q}.gguf"), None) for q in TYPES}
    if files["q3_k_m"] is None:
        files["q3_k_m"] = work / "demo-q3_k_m.gguf"
        quantize(files["f16"], files["q3_k_m"], "q3_k_m", threads, work / "q.log", next(export.glob("*.imatrix.gguf"), None))
    return files


def smollm2_files(work: Path, threads: int) -> dict[str, Path]:
    from bench_imatrix import gsm8k_traces
    from distill.export.config import ExportConfig
    from distill.export.stage import run
    from tests.conftest import SHARED_BENCHMARKS, smollm2_folder

    out = work / "smollm2-export"
    if not (out / "manifest.json").is_file():
        traces = gsm8k_traces(SHARED_BENCHMARKS / "gsm8k_train.jsonl", 120, work / "traces.jsonl")
        config = ExportConfig(model=str(smollm2_folder()), out=str(out), gguf=list(TYPES), imatrix=str(traces),
                              imatrix_texts=120, imatrix_heldout=0.0, validate=False, threads=threads,
                              name="smol", overwrite=True)
        config.check()
        run(config)
    return {q: out / f"smol-{q}.gguf" for q in TYPES}


def gsm8k_problems(work: Path, start: int, n: int) -> Path:
    from tests.conftest import SHARED_BENCHMARKS
    rows = []
    with open(SHARED_BENCHMARKS / "gsm8k_train.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if start <= i < start + n:
                row = json.loads(line)
                rows.append({"id": f"train-{i}", "question": row["question"], "answer": row["answer"]})
    path = work / "gsm8k-problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def evaluate(files: dict[str, Path], benchmark: str, out: Path, temperature: float, samples: int,
             max_new_tokens: int, threads: int, limit: int | None) -> list[dict]:
    from distill.eval.config import EvalConfig
    from distill.eval.stage import run

    config = EvalConfig(model=[f"gguf:{p}" for p in files.values()], label=list(files), benchmark=benchmark,
                        out=str(out), samples=samples, temperature=temperature, top_p=0.95 if temperature else 1.0,
                        max_new_tokens=max_new_tokens, speed_tokens=0, threads=threads, limit=limit)
    config.check()
    return run(config)["results"]


def table(name: str, greedy: list[dict], sampled: list[dict], samples: int) -> None:
    print(f"\n## {name}\n")
    print("| file | decoding | samples | pass@1 | truncated | loop rate | think never closed | answer in think |")
    print("|---|---|---|---|---|---|---|---|")
    for rows, how in ((greedy, "greedy"), (sampled, f"T=0.6, top-p 0.95, {samples}/problem")):
        for r in rows:
            print(f"| {r['label']} | {how} | {r['n_samples']} | {r['pass_at_1']:.1%} | {r['truncation_rate']:.1%} | "
                  f"{r['loop_rate']:.1%} | {r['think_unclosed_rate']:.1%} | {r['answer_in_think_rate']:.1%} |")


def spans(out: Path, limit: int = 3) -> None:
    shown = 0
    for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        if s.get("loop") and shown < limit:
            print(f"  {s['label']} {s['problem_id']}: x{s['loop']['repeats']} {s['loop']['span'][:80]!r}")
            shown += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "smollm2", "both"), default="both")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem at T=0.6")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--demo-run", type=Path, default=None)
    parser.add_argument("--problems", type=int, default=24, help="SmolLM2's GSM8K problems")
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    print(f"load: {open('/proc/loadavg').read().split()[:3]} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-loops-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.model in ("demo", "both"):
            run = args.demo_run or next((p for p in (Path("/tmp/demo0"), REPO / "demo-run") if (p / "export").is_dir()))
            files = demo_files(run, work, args.threads)
            greedy = evaluate(files, "demo", work / "demo-greedy", 0.0, 1, 128, args.threads, None)
            sampled = evaluate(files, "demo", work / "demo-t06", 0.6, args.samples, 128, args.threads, None)
            table(f"demo student ({run}), demo test split, 128 new tokens", greedy, sampled, args.samples)
            spans(work / "demo-t06")
        if args.model in ("smollm2", "both"):
            files = smollm2_files(work, args.threads)
            problems = gsm8k_problems(work, 5000, args.problems)
            greedy = evaluate(files, str(problems), work / "smol-greedy", 0.0, 1, 384, args.threads, None)
            sampled = evaluate(files, str(problems), work / "smol-t06", 0.6, args.samples, 384, args.threads, None)
            table(f"SmolLM2-135M-Instruct, {args.problems} GSM8K problems, 384 new tokens", greedy, sampled, args.samples)
            spans(work / "smol-greedy")
            spans(work / "smol-t06")
    print(f"\nload at the end: {open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
