"""The HF reference of a model, recorded by one export and read by the next export of the same
weights, so that the second one neither imports torch and transformers nor runs the model.

A user exports a model more than once (another quantization, a device profile, a fit size, a
rerun after a failed check); the reference is the same each time, and making it is most of a
small model's validated export (importing torch and transformers alone takes about 4 s of a core).

A record is found by a fingerprint of the folder's files (relative paths, sizes, modification
times), of the reference's own texts and settings and of the transformers and torch versions
that made it; it is used only once the folder's content hash, which the export computes anyway
for its stage record, equals the one recorded. Records live in `$DISTILL_CACHE/export-references`
(default: `$XDG_CACHE_HOME/distill` or `~/.cache/distill`), the most recent MAX_RECORDS of them;
`--no-reference-cache` neither reads nor writes them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import numpy as np

from .reference import GREEDY_PROMPTS, HELD_OUT, HELD_OUT_TOKENS, TOKEN_CORPUS, Reference, judge_against

FORMAT = 1           # what a record holds; a change here makes older records unreadable by design
MAX_RECORDS = 8      # the held-out logits of a 150k-vocabulary model take 78 MB


def cache_root() -> Path:
    base = os.environ.get("DISTILL_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distill"
    return Path(base) / "export-references"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def fingerprint(folder: Path, new_tokens: int, trust_remote_code: bool) -> str:
    files = sorted((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") for st in [p.stat()])
    what = {"format": FORMAT, "files": files, "new_tokens": new_tokens, "trust_remote_code": trust_remote_code,
            "texts": [TOKEN_CORPUS, GREEDY_PROMPTS, HELD_OUT, HELD_OUT_TOKENS],
            "versions": [_version("transformers"), _version("torch")]}
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]


class CachedReference:
    """A recorded reference, with ReferenceProcess's interface (nothing runs, nothing to free)."""

    cached = True

    def __init__(self, record: Path):
        meta = json.loads((record / "reference.json").read_text())
        self.source_sha256 = meta.pop("source_sha256")
        logits = np.load(record / "held_out_logits.npy", mmap_mode="r")
        paths = [(tokens, np.load(record / f"greedy-{i}.npy", mmap_mode="r"))
                 for i, tokens in enumerate(meta.pop("greedy_tokens"))]
        eos, self.new_tokens = set(meta["eos_ids"]), meta["new_tokens"]
        self._ref = Reference.from_inputs(meta, held_out_logits=lambda: logits,
                                          judge=judge_against(lambda: paths, eos, meta["new_tokens"]))

    def inputs(self) -> Reference:
        return self._ref

    def release(self) -> None:
        pass

    def stop(self) -> None:
        pass


class CheckedReference:
    """A recorded reference that is used once the source's content hash (`source_sha256()`, waited
    for at the first use, while the export has been writing meanwhile) equals the recorded one;
    otherwise the record is dropped and a reference process (`make()`) stands in."""

    def __init__(self, recorded: CachedReference, cache: "ReferenceCache", source_sha256, make):
        self._recorded, self._cache, self._sha256, self._make = recorded, cache, source_sha256, make
        self._chosen = None

    def _target(self):
        if self._chosen is None:
            if self._recorded.source_sha256 == self._sha256():
                self._chosen = self._recorded
            else:  # the same file names, sizes and times, other bytes: made again
                self._cache.drop()
                self._chosen = self._make()
        return self._chosen

    @property
    def cached(self) -> bool:
        return self._target().cached

    @property
    def new_tokens(self) -> int:
        return self._target().new_tokens

    def inputs(self) -> Reference:
        return self._target().inputs()

    def release(self) -> None:
        self._target().release()

    def complete(self) -> bool:
        return self._target().complete()

    def parts(self):
        return self._target().parts()

    def stop(self) -> None:
        if self._chosen is not None:
            self._chosen.stop()


class ReferenceCache:
    """The record of one source folder: `load()` it, `save(reference, sha256)` a made one, `drop()`
    one that turned out stale. A disabled cache (or one that cannot be read) finds nothing."""

    def __init__(self, folder: Path, new_tokens: int, trust_remote_code: bool, enabled: bool = True):
        self.record: Optional[Path] = None
        if enabled:
            try:
                self.record = cache_root() / fingerprint(folder, new_tokens, trust_remote_code)
            except OSError:
                self.record = None

    def recorded(self) -> bool:
        """Whether a record seems to be there (`load` reads and checks it)."""
        return self.record is not None and (self.record / "reference.json").is_file()

    def open(self, source_sha256, make):
        """The recorded reference, checked against `source_sha256()` at its first use, or a new
        reference process (`make()`) when there is none."""
        recorded = self.load()
        return CheckedReference(recorded, self, source_sha256, make) if recorded is not None else make()

    def load(self) -> Optional[CachedReference]:
        if not self.recorded():
            return None
        try:
            found = CachedReference(self.record)
        except (OSError, ValueError, KeyError):  # a damaged record is made again
            self.drop()
            return None
        os.utime(self.record)  # the most recently used are the ones kept
        return found

    def drop(self) -> None:
        if self.record is not None:
            shutil.rmtree(self.record, ignore_errors=True)

    def save(self, reference, source_sha256: Optional[str]) -> None:
        """Record a ReferenceProcess's parts (all of them arrived) for the next export; a cache
        that cannot be written only costs the next export its time."""
        if self.record is None or source_sha256 is None or reference.cached or not reference.complete():
            return
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.record.parent))
            inputs, logits, paths = reference.parts()
            shutil.copyfile(logits, tmp / "held_out_logits.npy")
            for i, (_, rows) in enumerate(paths):
                shutil.copyfile(rows, tmp / f"greedy-{i}.npy")
            meta = {**inputs, "greedy_tokens": [tokens for tokens, _ in paths], "source_sha256": source_sha256}
            (tmp / "reference.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, self.record)
            except OSError:  # another export recorded it first
                shutil.rmtree(tmp, ignore_errors=True)
            self._prune()
        except OSError:
            return

    def _prune(self) -> None:
        """Keep the MAX_RECORDS most recently used, and no half-written one an export killed
        while saving left behind (older than an hour: a running export's is newer)."""
        entries = list(self.record.parent.iterdir())
        records = sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime,
                         reverse=True)
        stale = [p for p in entries if p.name.startswith(".tmp-") and time.time() - p.stat().st_mtime > 3600]
        for old in records[MAX_RECORDS:] + stale:
            shutil.rmtree(old, ignore_errors=True)
