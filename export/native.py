"""llama.cpp work in a child process. llama.cpp aborts the whole process on a failed assertion
(a vocabulary with two ids of the same text, a malformed header), so quantizing, loading and
validating each artifact runs in its own `python -m export.native` child: an abort there becomes
`NativeAbort` here, with llama.cpp's own assertion as the message.

Only small things cross the boundary: the job and its result as one JSON line each way. Arrays
(reference logits, the f16 file's logits) travel as .npy files in the export's work folder, which
the child memory-maps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    """A running `python -m export.native OP` child. Its job is sent at once; `finish` can send a
    second part the job waits for (the reference outputs, computed meanwhile), then collects the
    result."""

    def __init__(self, op: str, job: dict, log_path: Path):
        env = {**os.environ, "GGML_NO_BACKTRACE": "1",  # else the last lines are a debugger's frames
               "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "export.native", op], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, env=env, cwd=REPO)
        self._send(job)

    def _send(self, part: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(part) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:  # it has already ended; `finish` says why
            pass

    def finish(self, more: dict | None = None) -> dict:
        if more is not None:
            self._send(more)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        out = self.proc.stdout.read()
        self.proc.wait()
        lines = out.decode("utf-8", errors="replace").strip().splitlines()
        if self.proc.returncode == 0 and lines:
            return json.loads(lines[-1])
        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        raise NativeAbort(f"{last_words(self.log_path) or 'no message'} ({how})")


def run_child(op: str, job: dict, log_path: Path) -> dict:
    """Run `op` (a name in OPS) on `job` in a child process; its result dict. llama.cpp's log
    goes to `log_path`."""
    return Child(op, job, log_path).finish()


def _quantize(job: dict, more) -> dict:
    from .quantize import quantize_here
    return quantize_here(job)


def _check_gguf(job: dict, more) -> dict:
    from .validate import check_gguf_here
    return check_gguf_here(job, more)


OPS = {"quantize": _quantize, "check_gguf": _check_gguf}


def main() -> int:
    # The result goes to the real stdout; anything native code prints goes to the log.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    job = json.loads(sys.stdin.readline())
    result = OPS[sys.argv[1]](job, lambda: json.loads(sys.stdin.readline()))
    result_out.write(json.dumps(result) + "\n")
    result_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
