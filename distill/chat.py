"""`distill chat SPEC`: talk to a model in the terminal, on the runtime that will run it.

SPEC is anything `distill eval` takes (a .gguf file, an ONNX folder, a Hugging Face folder, an
openai: URL). The conversation is rendered with the model's own chat template each turn and the
reply streamed as it is decoded: the think block dimmed, the answer plain. Earlier turns keep
only their answers (R1 and Qwen3 drop earlier reasoning from the context; it also keeps the
context short). With --think-budget N the thinking stops after N tokens, `</think>` is forced
and the answer may take up to --max-new-tokens more (budget forcing, as in `distill eval`).

--prompt TEXT answers once for scripts: the answer on stdout, the thinking on stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from distill.backends import Completion, Sampling, load_checked, parse_spec
from distill.backends.recorded import recorded_prompt
from distill.core.chat import THINK_CLOSE, THINK_OPEN, load_prompt_template, prefill_of, user_message
from distill.core.config import option
from distill.core.errors import UserError

FORCED_CLOSE = f"\n{THINK_CLOSE}\n\n"
HELP = "/reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops a reply"


@dataclass
class ChatConfig:
    model: str = option("", "A .gguf file, an ONNX folder, a Hugging Face folder, or an openai: URL (as eval takes)")
    prompt: Optional[str] = option(None, "Answer TEXT once and exit: the answer on stdout, the thinking on stderr")
    system: Optional[str] = option(None, "System message at the start of the conversation")
    think: Optional[bool] = option(None, "Open each reply with <think> (R1-style reasoning models); --no-think for other models (default: as the model was trained, else on)")
    prompt_template: Optional[str] = option(None, "Wrap each message in a user-turn template: a bundled name (r1, plain), a file, or text with {problem} (default: the one the model was trained with, recorded by train and export; else the text as typed)")
    think_budget: Optional[int] = option(None, "Thinking tokens before </think> is forced (then up to --max-new-tokens of answer)")
    temperature: float = option(0.6, "Sampling temperature (0 = greedy; R1 models are meant for 0.6)")
    top_p: float = option(0.95, "Nucleus sampling")
    max_new_tokens: int = option(2048, "Token limit per reply (with --think-budget: of the answer)")
    seed: int = option(0, "Random seed")
    served_model: Optional[str] = option(None, "Model name on an openai: server")
    api_key_env: Optional[str] = option(None, "Name of the environment variable holding the API key (openai:)")
    n_ctx: int = option(8192, "Context window for gguf models (the whole conversation must fit)")
    threads: Optional[int] = option(None, "CPU threads for the local runtimes (default: all cores)")
    dtype: str = option("auto", "Torch dtype for hf: auto, float32, bfloat16, float16")
    trust_remote_code: bool = option(False, "Allow model repositories to run their own code")

    def check(self) -> None:
        if self.max_new_tokens < 1 or self.n_ctx < 1:
            raise UserError("max_new_tokens/n_ctx: must be at least 1")
        if self.think_budget is not None and self.think_budget < 1:
            raise UserError("think_budget: must be at least 1 token")
        if not 0 <= self.temperature <= 5 or not 0 < self.top_p <= 1:
            raise UserError("temperature/top_p: temperature must be in [0, 5] and top_p in (0, 1]")
        if self.threads is not None and self.threads < 1:
            raise UserError("threads: must be at least 1")
        if self.prompt is not None and not self.prompt.strip():
            raise UserError("prompt: the text is empty")

    def check_complete(self) -> None:
        if not self.model:
            raise UserError("model: give the model to talk to (a .gguf file, an ONNX folder, an hf folder, openai:URL)")
        kind, _ = parse_spec(self.model)
        if kind == "openai" and not self.served_model:
            raise UserError("served_model: an openai: model needs --served-model NAME")
        if self.think_budget and self.think is False:
            raise UserError("think_budget: budget forcing needs the think block (drop --no-think)")
        if kind == "openai" and self.think_budget:
            raise UserError("think_budget: budget forcing continues the model's own text, which an "
                            "openai: chat server does not allow")


def open_model(cfg: ChatConfig):
    kind, _ = parse_spec(cfg.model)
    options = {
        "gguf": dict(n_ctx=cfg.n_ctx, threads=cfg.threads),
        "hf": dict(dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, batch_size=1, threads=cfg.threads),
        "onnx": dict(threads=cfg.threads, batch_size=1, trust_remote_code=cfg.trust_remote_code),
        "openai": dict(model=cfg.served_model, api_key_env=cfg.api_key_env, max_retries=2),
    }[kind]
    return load_checked(cfg.model, **options)


class ReplyView:
    """Sends streamed text to `show_thinking` while inside the think block and to `show_answer`
    after it; a tag split across two pieces is held back until it is whole."""

    def __init__(self, show_thinking: Callable[[str], None], show_answer: Callable[[str], None], thinking: bool):
        self.show_thinking, self.show_answer = show_thinking, show_answer
        self.thinking, self.pending, self.answer_started = thinking, "", False

    def feed(self, text: str) -> None:
        self.pending += text
        while True:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = self.pending.find(tag)
            if at < 0:
                keep = next((n for n in range(min(len(tag) - 1, len(self.pending)), 0, -1)
                             if tag.startswith(self.pending[-n:])), 0)
                self._emit(self.pending[:len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                return
            self._emit(self.pending[:at])
            self.pending = self.pending[at + len(tag):]
            self.thinking = not self.thinking

    def close(self) -> None:
        self._emit(self.pending)
        self.pending = ""

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.thinking:
            self.show_thinking(text)
            return
        if not self.answer_started:  # the blank lines between </think> and the answer
            text = text.lstrip()
            if not text:
                return
            self.answer_started = True
        self.show_answer(text)


def _pump(pieces: Iterator[str], view: ReplyView) -> Completion:
    """Feed a backend's stream to the view; its return value is the Completion."""
    try:
        while True:
            view.feed(next(pieces))
    except StopIteration as done:
        return done.value
    finally:
        pieces.close()  # stops a generation cut short (Ctrl-C)


def reply(backend, messages: list[dict], cfg: ChatConfig,
          make_view: Callable[[bool], ReplyView]) -> Completion:
    """Stream the next assistant turn into a view (`make_view(starts_thinking)`); the Completion
    holds the whole response and its token counts."""
    prompt = backend.render_messages(messages, cfg.think is not False)
    view = make_view(isinstance(prompt, str) and bool(prefill_of(prompt)))
    sampling = Sampling(n=1, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                        max_new_tokens=cfg.think_budget or cfg.max_new_tokens)
    try:
        first = done = _pump(backend.stream(prompt, sampling), view)
        text, tokens, decode_s = done.text, done.completion_tokens, done.decode_s or 0.0
        if cfg.think_budget and done.finish_reason == "length" and not done.error:
            if THINK_CLOSE not in text:  # budget spent while thinking: close the block, then answer
                view.feed(FORCED_CLOSE)
                text += FORCED_CLOSE
            sampling.max_new_tokens = cfg.max_new_tokens
            done = _pump(backend.stream(prompt + text, sampling), view)
            text, tokens, decode_s = text + done.text, tokens + done.completion_tokens, decode_s + (done.decode_s or 0.0)
    finally:
        view.close()
    if done.error:
        raise UserError(f"{cfg.model}: {done.error}" + (" (/reset starts over)" if cfg.prompt is None else ""))
    return Completion(text, done.finish_reason, first.prompt_tokens, tokens, ttft_s=first.ttft_s, decode_s=decode_s)


def answer_of(text: str) -> str:
    """What the conversation keeps of a reply: the answer after the think block (all of it when
    the block never closed)."""
    return text.rsplit(THINK_CLOSE, 1)[1].strip() if THINK_CLOSE in text else text.replace(THINK_OPEN, "").strip()


def apply_recorded(cfg: ChatConfig) -> str | None:
    """The template the user's text is wrapped in, and `cfg.think` settled: what the flags say,
    else what the model was trained with (distill/backends/recorded.py)."""
    recorded = recorded_prompt(cfg.model) if cfg.prompt_template is None or cfg.think is None else None
    if cfg.think is None:
        cfg.think = bool(recorded.get("think", True)) if recorded else True
    if cfg.prompt_template is not None:
        return load_prompt_template(cfg.prompt_template)
    return recorded["prompt_template"] if recorded else None


def run(cfg: ChatConfig) -> dict:
    cfg.check_complete()
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    template = apply_recorded(cfg)
    backend = open_model(cfg)
    start = [{"role": "system", "content": cfg.system}] if cfg.system else []
    try:
        if cfg.prompt is not None:
            text = user_message(cfg.prompt, template) if template else cfg.prompt
            messages = start + [{"role": "user", "content": text}]

            answered = []

            def show_answer(text: str) -> None:
                answered.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
            done = reply(backend, messages, cfg, lambda thinking: ReplyView(
                lambda t: err.print(t, style="dim", end="", markup=False), show_answer, thinking))
            sys.stdout.write("\n")
            if not answered and THINK_CLOSE not in done.text:  # everything went to stderr as thinking
                err.print(f"\nnote: the think block never closed after {done.completion_tokens} tokens, so there is "
                          "no answer on stdout; --no-think is for models that do not reason", markup=False)
            return {"response": done.text, "answer": answer_of(done.text)}
        return {"turns": _interactive(backend, cfg, start, template)}
    finally:
        backend.close()


def _interactive(backend, cfg: ChatConfig, start: list[dict], template: str | None) -> int:
    from rich.console import Console
    from rich.markup import escape
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass

    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold]distill chat[/] {cfg.model}  [dim]({HELP})[/]")
    messages, turns = list(start), 0
    while True:
        try:
            text = input("you> ")
        except EOFError:
            out.print()
            return turns
        except KeyboardInterrupt:
            out.print()
            return turns
        text = text.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return turns
        if text == "/reset":
            messages = list(start)
            out.print("[dim](a new conversation)[/]")
            continue
        messages.append({"role": "user", "content": user_message(text, template) if template else text})
        try:
            done = reply(backend, messages, cfg, lambda thinking: ReplyView(
                lambda t: out.print(t, style="dim", end="", markup=False),
                lambda t: out.print(t, end="", markup=False), thinking))
        except KeyboardInterrupt:
            out.print("\n[dim](stopped; this turn is forgotten)[/]")
            messages.pop()
            continue
        except UserError as e:
            out.print(f"\n[red]{escape(str(e))}[/]")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer_of(done.text)})
        turns += 1
        speed = f", {done.completion_tokens / done.decode_s:.1f} tok/s" if done.decode_s else ""
        out.print(f"\n[dim]({done.completion_tokens} tokens{speed})[/]")
