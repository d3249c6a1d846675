"""What bench/gpu.py needs on a lent GPU machine that it cannot fetch there (no network), made on
this CPU machine into one ignored folder, `.gpu-bench/`, that the device tool carries:

- `wheels/`: the pure-Python wheels the GPU image lacks or has too old (transformers at the
  project's floor from pyproject.toml, since the image's 5.17 is below it; trl, datasets, peft at
  the versions this machine's tests run; datasets' own pure-Python needs dill and multiprocess;
  liger-kernel, so that TRL's Liger variant can be measured). `pip download --no-deps
  --only-binary :all:` for CPython 3.12 on x86-64, as the device notes say. Everything else
  (torch, accelerate, tokenizers, huggingface_hub, safetensors, pyarrow) is the image's.
- `qwen2-tokenizer/`: Qwen2's real 151,936-entry vocabulary rebuilt from llama.cpp's
  ggml-vocab-qwen2.gguf with llama.cpp's copy of Qwen2.5-Instruct's chat template, as
  bench/bench_train_memory.py does (it needs the `gguf` package, which the GPU image lacks).
- `manifest.json`: versions, files and sizes.

The device tool carries the working tree plus the named paths, 64 MiB in all: the folder's size
and the tracked tree's are printed and checked against that.

    python bench/gpu_prepare.py [--out .gpu-bench] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
CARRY_LIMIT = 64 * 2 ** 20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
# Not in the GPU image (or too old there); the rest of their needs are in it.
INSTALLED_HERE = ("trl", "datasets", "peft", "dill", "multiprocess")
AT_FLOOR = ("transformers",)   # the image's 5.17 is below the floor; the floor is what we claim to support
NEWEST = ("liger-kernel",)     # not a dependency of ours: whatever PyPI has


def floor(name: str) -> str:
    """The `>=` version pyproject.toml names for `name`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        found = re.fullmatch(rf"{re.escape(name)}\s*>=\s*([\w.]+)", spec.strip())
        if found:
            return found.group(1)
    raise SystemExit(f"pyproject.toml names no floor for {name}")


def requirements() -> list[str]:
    pins = [f"{name}=={floor(name)}.*" if floor(name).count(".") == 1 else f"{name}=={floor(name)}"
            for name in AT_FLOOR]
    for name in INSTALLED_HERE:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here: install the project's test environment first")
    return pins + list(NEWEST)


def download(pins: list[str], folder: Path, python_version: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(folder),
                    *pins], check=True)
    wheels = sorted(folder.glob("*.whl"))
    names = [w.name.split("-")[0].lower().replace("_", "-") for w in wheels]
    if len(set(names)) != len(names):  # two versions of one package stop the whole install there
        raise SystemExit(f"two wheels of one package in {folder}: {names}")
    return wheels


def build_tokenizer(folder: Path) -> dict:
    """Qwen2's tokenizer from llama.cpp's test vocabulary (transformers rebuilds the BPE from the
    GGUF), with Qwen2.5-Instruct's chat template; tokenizer.json gzipped (11 MiB to 2 MiB of the
    carry limit), unpacked again by bench/gpu.py."""
    import tempfile

    from transformers import AutoTokenizer

    from gpu_parts import unpack_tokenizer
    from tests.llama_vendor import vendor_models, vocab_file
    if not (folder / "tokenizer.json.gz").is_file():
        gguf = vocab_file("qwen2")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.chat_template = (vendor_models() / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        tok.save_pretrained(staging)
        (staging / "tokenizer.json.gz").write_bytes(gzip.compress((staging / "tokenizer.json").read_bytes(), 9))
        (staging / "tokenizer.json").unlink()
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(unpack_tokenizer(folder, Path(tmp) / "tokenizer"))
    return {"tokens": len(tok), "end_of_turn": tok.convert_tokens_to_ids("<|im_end|>"),
            "source": "llama.cpp models/ggml-vocab-qwen2.gguf"}


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def tracked_tree_bytes() -> int:
    """What the device tool sends besides the carried paths: tracked files plus untracked ones git
    does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-bench")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.12 there)")
    args = parser.parse_args()
    out = args.out.resolve()
    pins = requirements()
    print(f"downloading {', '.join(pins)}", flush=True)
    wheels = download(pins, out / "wheels", args.python_version)
    print("rebuilding Qwen2's tokenizer from ggml-vocab-qwen2.gguf (once)", flush=True)
    tokenizer = build_tokenizer(out / "qwen2-tokenizer")
    tree, carried = tracked_tree_bytes(), size(out)
    manifest = {"wheels": {w.name: w.stat().st_size for w in wheels}, "python_version": args.python_version,
                "tokenizer": tokenizer, "carried_bytes": carried, "working_tree_bytes": tree,
                "limit_bytes": CARRY_LIMIT}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    mib = 2 ** 20
    print(f"{out}: wheels {size(out / 'wheels') / mib:.1f} MiB, tokenizer {size(out / 'qwen2-tokenizer') / mib:.1f} "
          f"MiB; with the working tree ({tree / mib:.1f} MiB): {(tree + carried) / mib:.1f} MiB of the "
          f"{CARRY_LIMIT / mib:.0f} MiB the device tool carries")
    if tree + carried > CARRY_LIMIT:
        print("too large to carry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
