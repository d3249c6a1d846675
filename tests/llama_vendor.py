"""llama.cpp's own test material, from the llama-cpp-python source distribution of the installed
version: tokenizer test vocabularies (`models/ggml-vocab-*.gguf` with their `.inp`/`.out` test
strings) and real chat templates (`models/templates/*.jinja`). Fetched once into the test cache by
`pip download` (a package registry, as CI has), never committed. A failed fetch is an error, not a
skip: these are the references the export tests check against.

    python -m tests.llama_vendor     # fetch now and print the folder
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from tests.conftest import CACHE

MEMBERS = ("vendor/llama.cpp/models/ggml-vocab-", "vendor/llama.cpp/models/templates/")


def vendor_models() -> Path:
    """The folder that holds `ggml-vocab-*.gguf(.inp|.out)` and `templates/`."""
    release = version("llama-cpp-python")
    out = CACHE / f"llama-cpp-python-{release}" / "models"
    if (out / "templates").is_dir() and list(out.glob("ggml-vocab-*.gguf")):
        return out
    with tempfile.TemporaryDirectory(dir=CACHE.mkdir(parents=True, exist_ok=True) or CACHE) as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--quiet", "-d", tmp, f"llama-cpp-python=={release}"],
                              capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(f"could not fetch the llama-cpp-python {release} source distribution: "
                               f"{proc.stderr.strip()[-500:]}")
        staging = Path(tmp) / "models"
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[-1]
                if member.isfile() and inner.startswith(MEMBERS):
                    target = staging / inner.removeprefix("vendor/llama.cpp/models/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    return out


def vocab_file(name: str) -> Path:
    """`vocab_file("qwen2")` -> models/ggml-vocab-qwen2.gguf."""
    path = vendor_models() / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        names = sorted(p.name.removeprefix("ggml-vocab-").removesuffix(".gguf")
                       for p in vendor_models().glob("ggml-vocab-*.gguf"))
        raise FileNotFoundError(f"no vocabulary '{name}' in llama.cpp's models (have: {', '.join(names)})")
    return path


def test_strings(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test strings of a vocabulary and the token ids it expects for each (the
    `.inp` file ends every string with a marker line, the `.out` file holds one id list a line,
    an empty line for the empty string)."""
    base = vocab_file(name)
    marker = "\n__ggml_vocab_test__\n"
    texts = base.with_suffix(".gguf.inp").read_text(encoding="utf-8").split(marker)
    expected = base.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    if texts[-1] == "" and expected[-1] == "":  # both files end with a separator
        texts, expected = texts[:-1], expected[:-1]
    if len(texts) != len(expected):
        raise ValueError(f"{base}: {len(texts)} test strings but {len(expected)} expected id lists")
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(texts, expected)]


if __name__ == "__main__":
    print(vendor_models())
