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


def run_child(op: str, job: dict, log_path: Path) -> dict:
    """Run `op` (a name in OPS) on `job` in a child process; its result dict. llama.cpp's log
    goes to `log_path`."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1",  # else the last lines are a debugger's frames
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(log_path, "ab") as log:
        proc = subprocess.run([sys.executable, "-m", "export.native", op], input=json.dumps(job).encode(),
                              stdout=subprocess.PIPE, stderr=log, env=env, cwd=REPO)
    lines = proc.stdout.decode("utf-8", errors="replace").strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    if proc.returncode < 0:
        how = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        how = f"exit status {proc.returncode}"
    raise NativeAbort(f"{last_words(log_path) or 'no message'} ({how})")


def _quantize(job: dict) -> dict:
    from .quantize import quantize_here
    return quantize_here(job)


def _check_gguf(job: dict) -> dict:
    from .validate import check_gguf_here
    return check_gguf_here(job)


OPS = {"quantize": _quantize, "check_gguf": _check_gguf}


def main() -> int:
    # The result goes to the real stdout; anything native code prints goes to the log.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    job = json.loads(sys.stdin.read())
    result = OPS[sys.argv[1]](job)
    result_out.write(json.dumps(result) + "\n")
    result_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
