"""Export work in child processes, the parent's side. llama.cpp aborts the whole process on a
failed assertion (a vocabulary with two ids of the same text, a malformed header), so quantizing,
loading and validating each artifact runs in its own `python -m distill.export.worker OP` child
(worker.py, the child's side): an abort there becomes `NativeAbort` here, with llama.cpp's own
assertion as the message. The HF reference runs in one
too (export/reference.py), so that torch and transformers import and run on another core.

Only small things cross the boundary: JSON lines each way (the job, the parts a child waits for,
the messages it sends back, its result). Arrays (reference logits, the f16 file's logits) travel
as .npy files in the export's work folder, which the child memory-maps. Every path in a job is
absolute (`absolute`) and a child runs in the folder of its log (the export's work folder), so
that an export given relative paths works from whatever folder the user started it in."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

def absolute(path) -> str | None:
    """A path as a child process must get it: absolute (it runs in another folder)."""
    return None if path is None else os.path.abspath(path)


def parent_has_sent() -> bool:
    """In a child (worker.py): whether the parent has sent a part that is not read yet. Parts are
    read a line at a time, so nothing waits in this process's own buffer between them."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


class NativeAbort(Exception):
    """llama.cpp ended the child process (an assertion, a signal) before it answered."""


def last_words(log_path: Path) -> str:
    """The line that says why llama.cpp stopped: its assertion when there is one."""
    if not log_path.is_file():
        return ""
    lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    for markers in (("GGML_ASSERT",), ("GGML_ABORT", "fatal error"), ("error", "Error", "terminate")):
        found = [ln for ln in lines if any(m in ln for m in markers)]
        if found:
            return found[-1]
    return lines[-1] if lines else ""


class Child:
    """A running `python -m distill.export.worker OP` child. Its job is sent at once; `send` (and `finish`)
    send further parts the job waits for, `receive` reads what it sends back meanwhile, and
    `finish` collects its result."""

    def __init__(self, op: str, job: dict | None, log_path: Path):
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # else the last lines are a debugger's frames
        self.job, self.log_path = job, log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "distill.export.worker", op], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, env=env,
                                         cwd=Path(log_path).resolve().parent)
        if job is not None:
            self.send(job)

    @classmethod
    def waiting(cls, op: str, log_path: Path) -> "Child":
        """A child started before its job is known: Python and the runtime import while this
        process does other work, and `begin` hands it the job."""
        return cls(op, None, log_path)

    def begin(self, job: dict) -> "Child":
        self.job = job
        self.send(job)
        return self

    def send(self, part: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(part) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:  # it has already ended; `finish` says why
            pass

    def receive(self) -> dict:
        """The next message the child sends (`emit`) before its result."""
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        raise self._ended()

    def stop(self) -> None:
        """End a child that would otherwise wait for more (its files are written and read)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except BrokenPipeError:
                pass
        self.proc.kill()
        self.proc.wait()

    def finish(self, more: dict | None = None) -> dict:
        if more is not None:
            self.send(more)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        out = self.proc.stdout.read()
        self.proc.wait()
        lines = out.decode("utf-8", errors="replace").strip().splitlines()
        if self.proc.returncode == 0 and lines:
            return json.loads(lines[-1])
        raise self._ended()

    def _ended(self) -> NativeAbort:
        code = self.proc.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return NativeAbort(f"{last_words(self.log_path) or 'no message'} ({how})")


def run_child(op: str, job: dict, log_path: Path) -> dict:
    """Run `op` (a name in worker.OPS) on `job` in a child process; its result dict. llama.cpp's log
    goes to `log_path`."""
    return Child(op, job, log_path).finish()
