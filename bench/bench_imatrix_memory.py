"""Peak memory of the importance-matrix pass against one copy of the weights, measured in one run.

The pass (export/imatrix.py `compute_imatrix`) runs SmolLM2-135M-Instruct (fp32, the test cache's
model folder) over 200 texts of 150-300 random token ids in batches, with the hooks on. Each side
is its own process, so that each peak is its own: the baseline loads the same model and reads
every weight once (from_pretrained memory-maps the safetensors, so a model that is only loaded
is not yet resident), and does nothing else. Printed: both peaks, their difference (what the pass itself holds: the hooks'
sums and one batch of activations) and the safetensors size.

    python bench/bench_imatrix_memory.py [--threads 2] [--texts 200] [--batch-tokens 512]

The child processes inherit the environment, so glibc's allocator can be tried too
(`MALLOC_MMAP_THRESHOLD_=4194304 python bench/bench_imatrix_memory.py`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASS = """
import resource, sys, numpy as np
sys.path.insert(0, {root!r})
from pathlib import Path
from distill.export.source import check_model_folder, model_facts
from distill.export.imatrix import compute_imatrix
folder = Path({folder!r})
config = check_model_folder(folder)
rng = np.random.default_rng(0)
texts = [rng.integers(0, {vocab}, size=int(rng.integers(150, 300))) for _ in range({texts})]
m = compute_imatrix(folder, texts, model_facts(folder, config), "random", threads={threads},
                    batch_tokens={batch_tokens})
print(m.seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
LOAD_ONLY = """
import resource, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({folder!r}, dtype=torch.float32)
with torch.no_grad():  # the weights are memory-mapped: read every page, as a forward pass does
    sum(float(p.sum()) for p in model.parameters())
print(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak(code: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, mb = out.strip().splitlines()[-1].split()
    return float(seconds), float(mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: export's BATCH_TOKENS")
    args = parser.parse_args()
    from tests.conftest import smollm2_folder
    folder = smollm2_folder()
    import json
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    weights_mb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
    from distill.export.imatrix import BATCH_TOKENS
    batch_tokens = args.batch_tokens or BATCH_TOKENS
    seconds, with_pass = peak(PASS.format(root=str(ROOT), folder=str(folder), vocab=vocab, texts=args.texts,
                                          threads=args.threads, batch_tokens=batch_tokens))
    _, load_only = peak(LOAD_ONLY.format(folder=str(folder)))
    print(f"model: {folder.name}, {weights_mb:.0f} MiB of safetensors; {args.texts} texts in batches of "
          f"{batch_tokens} tokens, pass {seconds:.1f} s")
    print(f"peak RSS, model loaded and read:   {load_only:7.0f} MiB")
    print(f"peak RSS, importance-matrix pass:  {with_pass:7.0f} MiB ({with_pass / weights_mb:.2f}x the weights)")
    print(f"held by the pass beyond the loaded model: {with_pass - load_only:.0f} MiB "
          f"({(with_pass - load_only) / weights_mb:.2f}x the weights)")


if __name__ == "__main__":
    main()
