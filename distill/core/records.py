"""`<stage>.json`: what a stage was asked to do, on which inputs, with which tools, and what it
wrote. `distill run` compares these records to skip stages whose config and inputs are unchanged.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from .config import config_dict, input_fields
from .io import read_json, sha256_path, write_json

TRACKED_PACKAGES = (
    "distill-edge", "torch", "transformers", "datasets", "accelerate", "peft", "trl", "gguf",
    "llama_cpp_python", "onnxruntime", "onnxruntime-genai", "onnx", "math-verify", "openai",
)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def hash_inputs(cfg: Any) -> dict[str, dict]:
    """sha256 of every local path named by an `input=True` field; hub ids and URLs are recorded
    as given (they cannot be hashed offline)."""
    hashes = {}
    for name, value in input_fields(cfg).items():
        for item in value if isinstance(value, list) else [value]:
            item = str(item)
            local = item.split(":", 1)[1] if item.split(":", 1)[0] in ("hf", "gguf", "onnx") else item
            path = Path(local)
            key = f"{name}:{item}" if isinstance(value, list) else name
            if item == "demo":  # the bundled demo task, whatever a folder of that name holds
                from . import demo_task
                hashes[key] = {"path": item, "sha256": sha256_path(demo_task.__file__)}
            elif path.exists():
                hashes[key] = {"path": item, "sha256": sha256_path(path)}
            else:
                hashes[key] = {"path": item, "sha256": None}
    return hashes


def describe_outputs(out_dir: Path, paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            continue
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        rows.append({"path": os.path.relpath(p, out_dir), "bytes": size, "sha256": sha256_path(p)})
    return rows


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class StageRecord:
    """Use as `with StageRecord("train", cfg, cfg.out) as rec: ...; rec.outputs = [...]`.

    The record is written (atomically) only when the stage body finishes without error, so a
    record on disk always describes a complete stage. With `background`, the inputs are hashed in
    a thread while the stage works (hashlib lets go of the GIL): `rec.inputs` waits for them."""

    def __init__(self, stage: str, cfg: Any, out_dir: str | Path, background: bool = False):
        self.stage, self.cfg, self.out_dir = stage, cfg, Path(out_dir)
        self.outputs: list[Path] = []
        self.result: dict = {}
        self.started = None
        self.background = background
        self._inputs: dict = {}
        self._hashing: Optional[Future] = None

    @property
    def inputs(self) -> dict:
        if self._hashing is not None:
            self._inputs, self._hashing = self._hashing.result(), None
        return self._inputs

    @property
    def path(self) -> Path:
        return self.out_dir / f"{self.stage}.json"

    def __enter__(self) -> "StageRecord":
        self.started = _now()
        if self.background:
            pool = ThreadPoolExecutor(1, thread_name_prefix="hash-inputs")
            self._hashing = pool.submit(hash_inputs, self.cfg)
            pool.shutdown(wait=False)  # the thread ends with its one task
        else:
            self._inputs = hash_inputs(self.cfg)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        write_json(self.path, {
            "stage": self.stage,
            "config": config_dict(self.cfg),
            "inputs": self.inputs,
            "versions": package_versions(),
            "started": self.started,
            "finished": _now(),
            "outputs": describe_outputs(self.out_dir, self.outputs),
            "result": self.result,
        })


def is_up_to_date(stage: str, cfg: Any, out_dir: str | Path) -> bool:
    """True when `out_dir` holds a record of this stage with the same config and input hashes,
    and every output it lists is still there with the same hash."""
    path = Path(out_dir) / f"{stage}.json"
    if not path.is_file():
        return False
    try:
        record = read_json(path)
    except Exception:
        return False
    if record.get("config") != _jsonable(config_dict(cfg)) or record.get("inputs") != hash_inputs(cfg):
        return False
    for out in record.get("outputs", []):
        p = Path(out_dir) / out["path"]
        if not p.exists() or sha256_path(p) != out["sha256"]:
            return False
    return True


def _jsonable(obj: Any) -> Any:
    import json
    return json.loads(json.dumps(obj, default=str))
