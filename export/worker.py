"""The child's side of export's process boundary: `python -m distill.export.worker OP` reads its
job (JSON lines on stdin), runs one of OPS, and writes its messages and result (JSON lines) on
the real stdout, while anything native code prints goes to stderr, the parent's log file. The
parent's side is child.py."""

from __future__ import annotations

import json
import os
import sys

from .quantize import quantize_here
from .gguf_check import check_gguf_here
from .reference_child import reference_here

OPS = {"quantize": lambda job, more, emit: quantize_here(job),
       "check_gguf": check_gguf_here,
       "reference": reference_here}


def main() -> None:
    # The result goes to the real stdout; anything native code prints goes to the log.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def more() -> dict | None:  # the next part the parent sends; None once it has closed
        line = sys.stdin.readline()
        return json.loads(line) if line else None

    def emit(message: dict) -> None:
        result_out.write(json.dumps(message) + "\n")
        result_out.flush()

    # imported while the parent still reads the source or writes the file
    if sys.argv[1] == "check_gguf":
        import llama_cpp  # noqa: F401
    elif sys.argv[1] == "reference":
        import torch  # noqa: F401
        import transformers  # noqa: F401
    emit(OPS[sys.argv[1]](more(), more, emit))
    # The parent reads the result at EOF, so the process ends at once instead of tearing the
    # interpreter and llama.cpp down (0.3-0.5 s, on the validated export's critical path);
    # everything it wrote is closed by now.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
