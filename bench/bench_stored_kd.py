"""KD from stored teacher log-probs on the demo task, against SFT alone for the same steps.

For each seed: the demo's generate stage with `--logprobs K` (the MoE teacher's top-K stored with
the traces), the demo's SFT stage (demo.yaml's `train.sft`), then from that SFT student two
continuations of the same number of steps and learning rate: `--method kd` from the stored
log-probs (no teacher loaded) and plain SFT. Each student is evaluated on the demo test split;
the bench prints pass@1 of all three, the positions the stored ids fit, and what the log-probs
cost on disk per trace token (the traces folder against the same traces without the columns).

    python bench/bench_stored_kd.py [--seeds 0 1 2] [--k 20] [--steps 120] [--lr 3e-4] [--pipeline demo.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pass_at_1(model: Path, out: Path) -> float:
    from distill.core.config import build_config
    from distill.eval.config import EvalConfig
    from distill.eval.stage import run
    result = run(build_config(EvalConfig, dict(model=[f"hf:{model}"], label=["m"], benchmark="demo",
                                               max_new_tokens=128, batch_size=32, speed_tokens=0, out=str(out))))
    return result["results"][0]["pass_at_1"]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def one_seed(seed: int, args, work: Path) -> dict:
    from datasets import load_from_disk

    from distill.core.config import build_config, load_yaml
    from distill.data import DATA_DIR, asset
    from distill.generate.config import GenerateConfig
    from distill.generate.stage import run as generate
    from distill.train.config import TrainConfig
    from distill.train.stage import run as train

    spec = load_yaml(asset("pipelines", args.pipeline))
    fill = lambda section: {k: (v.replace("{data}", str(DATA_DIR)) if isinstance(v, str) else v)  # noqa: E731
                            for k, v in section.items()}
    generate(build_config(GenerateConfig, {**fill(spec["generate"]), "seed": seed, "logprobs": args.k,
                                           "out": str(work / "gen")}))
    train(build_config(TrainConfig, {**fill(spec["train.sft"]), "seed": seed, "traces": str(work / "gen"),
                                      "out": str(work / "sft")}))
    common = dict(student=str(work / "sft"), traces=str(work / "gen"), max_steps=args.steps, lr=args.lr,
                  batch_size=16, max_seq_len=256, eval_fraction=0.0, warmup_ratio=0.05, seed=seed,
                  save_steps=10_000, logging_steps=20)
    train(build_config(TrainConfig, {**common, "method": "kd", "out": str(work / "kd")}))
    train(build_config(TrainConfig, {**common, "method": "sft", "out": str(work / "sft_more")}))
    kd = json.loads((work / "kd" / "train_summary.json").read_text())
    traces = load_from_disk(str(work / "gen" / "traces"))
    plain = traces.remove_columns([c for c in traces.column_names if c.startswith("teacher_")])
    plain.save_to_disk(str(work / "plain"))
    tokens = sum(len(t) for t in traces["teacher_token_ids"])
    return {"seed": seed, "kept_traces": len(traces),
            "pass_at_1": {name: pass_at_1(work / name, work / f"eval-{name}") for name in ("sft", "sft_more", "kd")},
            "stored_positions": kd["stored_logprobs"],
            "bytes_per_trace_token": round((folder_bytes(work / "gen" / "traces") - folder_bytes(work / "plain"))
                                           / tokens, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--pipeline", default="demo.yaml", help="the bundled pipeline whose generate and "
                        "train.sft sections are used (demo-quick.yaml: a quick check of the bench itself)")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one_seed(seed, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print("seed | SFT | + SFT | + stored KD | positions fitted | bytes/token")
    for r in rows:
        p, s = r["pass_at_1"], r["stored_positions"]
        fitted = s["positions_matched"] / max(1, s["positions_matched"] + s["positions_unmatched"])
        print(f"{r['seed']} | {p['sft']:.1%} | {p['sft_more']:.1%} | {p['kd']:.1%} | {fitted:.0%} | "
              f"{r['bytes_per_trace_token']}")


if __name__ == "__main__":
    main()
