"""The measured parts of bench/gpu.py. Each runs in a fresh process (`python bench/gpu.py --part
NAME`), so that every peak of torch.cuda.max_memory_allocated is that part's own and a crash or
an out-of-memory error ends one part, not the bench.

- build: a random student of the real shape (and the on-policy teacher, another seed) saved as
  model folders with the tokenizer, and traces that fill `seq_len` tokens each.
- ours: `distill train`'s own code (setup.prepare / device_settings / say_what_fits /
  build_trainer, then the Trainer's train, as distill/train/stage.py runs them; the final save and
  LoRA merge are left out, they are not the step).
- trl: TRL's SFTTrainer on the same model folder and the same rows, with the same batch, length,
  precision, gradient checkpointing and sdpa attention, packed (its default BFD packing, which
  makes it padding-free); optionally Liger's kernels.
- onpolicy: one on-policy step (and a warm-up step) from a local teacher, its time split into
  sampling (HF generate through distill/backends/hf.py), the teacher's scoring forward, and the
  rest (the student's loss, backward and optimizer step).
Every part times its optimizer steps with a callback that synchronizes the GPU at both ends; the
first `warmup` steps (CUDA and cuBLAS start-up) are reported but not counted in tokens/s."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = REPO / "data" / "models" / "demo-tokenizer"


def use_repo_package() -> None:
    """Import distill from this checkout. On the GPU machine the working tree arrives without an
    install, and export/, eval/ and data/ are distill.export, distill.eval and distill.data only
    through pyproject's package-dir mapping: appending the checkout to distill's package path
    gives the same names."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import distill
    if importlib.util.find_spec("distill.data") is None:
        distill.__path__.append(str(REPO))


@dataclass
class Sizes:
    shape: dict           # Qwen2Config fields of the student (and teacher)
    seq_len: int          # max_seq_len; every trace fills it (within 16 tokens)
    batch: int            # traces per step, packed into one row
    steps: int
    warmup: int           # first steps left out of tokens/s
    lora_r: int
    prompts: int          # on-policy: prompts x samples x new_tokens per step
    samples: int
    new_tokens: int
    onpolicy_steps: int


def real_sizes() -> Sizes:
    from distill.train.estimate import KNOWN
    shape = {k: v for k, v in KNOWN["qwen2.5-1.5b"].items() if k != "attention_bias"}  # Qwen2 has q/k/v bias
    return Sizes(shape, seq_len=8192, batch=4, steps=6, warmup=2, lora_r=64, prompts=8, samples=4,
                 new_tokens=512, onpolicy_steps=2)


SMOKE = Sizes(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True), seq_len=256, batch=4, steps=3, warmup=1,
              lora_r=8, prompts=2, samples=2, new_tokens=8, onpolicy_steps=2)


def unpack_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of a tokenizer folder with its gzipped tokenizer.json (as gpu_prepare.py carries it)
    unpacked."""
    if dst.is_dir():
        return dst
    staging = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    packed = staging / "tokenizer.json.gz"
    if packed.is_file():
        (staging / "tokenizer.json").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    staging.rename(dst)
    return dst


# ---- build ------------------------------------------------------------------------------------

def build(work: Path, sizes: Sizes, tokenizer_dir: Path, gpu: bool, dtype=None, teacher: bool = True) -> dict:
    """The student (and teacher) folders and the traces; bf16 on a GPU, fp32 on a CPU unless `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    shape = {"vocab_size": len(tok), **sizes.shape}
    config = Qwen2Config(**shape, max_position_embeddings=32768, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
    dtype = dtype or (torch.bfloat16 if gpu else torch.float32)
    params = 0
    for name, seed in (("student", 0), ("teacher", 1))[:2 if teacher else 1]:
        torch.manual_seed(seed)
        with torch.device("cuda" if gpu else "cpu"):  # initialized where it is fast
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(work / name)
        tok.save_pretrained(work / name)
        del model
    lengths = write_traces(work / "traces.jsonl", tok, sizes, sizes.batch * sizes.steps)
    return {"parameters": params, "shape": shape, "dtype": str(dtype).split(".")[-1], "traces": len(lengths),
            "trace_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)}}


def write_traces(path: Path, tok, sizes: Sizes, n: int) -> list[int]:
    """`n` traces of distinct demo problems whose reasoning (the demo's own lines, repeated) fills
    each to within 16 tokens of seq_len; returns their encoded lengths as `distill train` encodes
    them."""
    from distill.core.demo_task import load_split
    from distill.core.traces import encode_traces, end_of_turn, load_traces
    problems = load_split("train")[:max(n, sizes.prompts * sizes.onpolicy_steps)]
    lines = [line for p in problems[:200] for line in p["reasoning"].splitlines()]
    costs = [len(ids) + 1 for ids in tok(lines, add_special_tokens=False)["input_ids"]]
    eot = end_of_turn(tok, "bench")

    def row(p, reasoning):
        prompt = f"{p['question']}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        return {"problem": p["question"], "prompt": prompt, "reasoning": reasoning,
                "answer": f"The answer is \\boxed{{{p['answer']}}}.", "kept": True}

    rows = []
    for k, p in enumerate(problems):
        bare = encode_traces(tok, [row(p, "x")], eot, 10 ** 9, "bench")[0][0]["input_ids"].size
        budget, used, text, i = sizes.seq_len - bare - 16, 0, [], k * 7
        while used + costs[i % len(lines)] <= budget:
            text.append(lines[i % len(lines)])
            used += costs[i % len(lines)]
            i += 1
        rows.append(row(p, "\n".join(text)))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    samples, too_long = encode_traces(tok, load_traces(str(path), "r1").rows, eot, sizes.seq_len, "bench")
    if too_long:
        raise RuntimeError(f"{too_long} bench traces came out longer than {sizes.seq_len} tokens")
    return [s["input_ids"].size for s in samples[:n]]


# ---- timing -----------------------------------------------------------------------------------

def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Spans:
    """Seconds spent in named spans (the GPU synchronized at both ends)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def span(self, name: str):
        _sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def step_timer(spans: Spans | None = None):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall seconds and input tokens of every optimizer step, and the spans inside it. A step
        runs from the end of the one before (from the start of training for the first), so that
        whatever the trainer does for it before `on_step_begin` (fetching the batch; an on-policy
        trainer may sample there) is counted in it."""

        def __init__(self):
            self.steps: list[dict] = []
            self.spans = spans or Spans()

        def on_train_begin(self, args, state, control, **kwargs):
            _sync()
            self._start, self._spans = time.perf_counter(), dict(self.spans.seconds)

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            now = time.perf_counter()
            parts = {k: round(v - self._spans.get(k, 0.0), 3) for k, v in self.spans.seconds.items()}
            self.steps.append({"seconds": round(now - self._start, 3),
                               "tokens_seen": int(state.num_input_tokens_seen), **parts})
            self._start, self._spans = now, dict(self.spans.seconds)

        def figures(self, warmup: int) -> dict:
            counted = self.steps[warmup:]
            seconds = sum(s["seconds"] for s in counted)
            before = self.steps[warmup - 1]["tokens_seen"] if warmup else 0
            tokens = self.steps[-1]["tokens_seen"] - before
            return {"tokens_per_second": round(tokens / seconds, 1) if seconds else None,
                    "tokens_per_step": round(tokens / len(counted)) if counted else None,
                    "steps_counted": len(counted), "steps": self.steps}

    return StepTimer()


def memory() -> dict:
    import torch
    if not torch.cuda.is_available():
        return {"peak_allocated_bytes": None, "measure": "no GPU (smoke run)"}
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(), "measure": "torch.cuda.max_memory_allocated"}
