"""Atomic writes, JSONL append/read with crash tolerance, and hashing.

Every file a stage produces goes through `atomic_path`/`atomic_dir`: a killed process leaves
only a hidden temporary name behind, never a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes owner-only files; outputs get the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes owner-only folders
        if target.exists():
            if not overwrite:
                raise UserError(f"{target}: already exists (pass --overwrite to replace it)")
            old = target.with_name(f"{TMP_PREFIX}{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from None


def read_jsonl(path: str | os.PathLike, tolerate_torn_tail: bool = False) -> list[dict]:
    """Read a JSONL file. With `tolerate_torn_tail`, a last line without its newline (a write
    cut short by a kill) is ignored instead of being an error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    rows = []
    lines = raw.split(b"\n")
    torn = lines[-1] != b""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}: line {number}: not UTF-8 text") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and torn and number == len(lines):
                break
            raise UserError(f"{path}: line {number}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number}: expected a JSON object")
        rows.append(row)
    return rows


def repair_jsonl_tail(path: str | os.PathLike) -> int:
    """Cut a half-written last line (no trailing newline) off an append-only JSONL file.
    Returns the number of bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


class JsonlAppender:
    """Append rows to a JSONL file, one flushed and fsynced line each."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_many(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_HASHED: dict[tuple[int, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The file's sha256, remembered by inode, size and modification time: a stage hashes its
    artifacts for the manifest and again, renamed into place, for its record."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def sha256_path(path: str | os.PathLike) -> str:
    """Hash a file, or a folder as the sorted list of (relative path, file hash)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = child.relative_to(path).as_posix()
        if any(part.startswith(TMP_PREFIX) for part in child.relative_to(path).parts):
            continue
        h.update(rel.encode() + b"\0" + sha256_file(child).encode() + b"\n")
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def require_path(path: str | os.PathLike, field: str, kind: str = "any") -> Path:
    """Check a user-given path exists (and is a file or folder); UserError naming the field."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{field}: {p}: no such file or folder")
    if kind == "file" and not p.is_file():
        raise UserError(f"{field}: {p}: expected a file, found a folder")
    if kind == "dir" and not p.is_dir():
        raise UserError(f"{field}: {p}: expected a folder, found a file")
    if not os.access(p, os.R_OK):
        raise UserError(f"{field}: {p}: not readable")
    return p
