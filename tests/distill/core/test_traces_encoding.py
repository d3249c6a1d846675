"""Loss masking is exact: prompt tokens are ignored; the assistant turn and the end-of-turn token
that closes it are trained, for the chat templates of the students we support."""

import pytest
from transformers import AutoTokenizer

from distill.core.chat import render_prompt
from distill.core.errors import UserError
from distill.core.traces import IGNORE, encode_traces, end_of_turn, labels_of, targets_of

from tests.distill.train.helpers import LLAMA3_SYSTEM, QWEN25_SYSTEM, tokenizer_folder

USER = "Ava has 3 apples. Then Ava gets 4 more. How many apples does Ava have now?\nPlease reason step by step."
REASONING = "3 + 4 = 7\nSo Ava has 7 apples."
ANSWER = "The answer is \\boxed{7}."
CHATML_PROMPT = f"<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Hand-written renderings: (prompt as the template writes it, end-of-turn token).
EXPECTED = {
    "demo": (CHATML_PROMPT, "<|im_end|>"),
    "qwen2.5": (f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n" + CHATML_PROMPT, "<|im_end|>"),
    "qwen3": (CHATML_PROMPT, "<|im_end|>"),
    "smollm2": (f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n" + CHATML_PROMPT, "<|im_end|>"),
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYSTEM + "<|eot_id|>"
               f"<|start_header_id|>user<|end_header_id|>\n\n{USER}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("templates")
    made = {}

    def get(kind):
        if kind not in made:
            smollm2 = request.getfixturevalue("smollm2_dir") if kind == "smollm2" else None
            made[kind] = AutoTokenizer.from_pretrained(tokenizer_folder(kind, tmp, smollm2))
        return made[kind]
    return get


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_only_the_assistant_turn_and_its_end_of_turn_token_are_trained(tokenizers, kind):
    tok = tokenizers(kind)
    prompt_text, eot_text = EXPECTED[kind]
    eot = end_of_turn(tok, kind)
    assert eot.text == eot_text and eot.token_id == tok.convert_tokens_to_ids(eot_text)

    [sample], too_long = encode_traces(tok, [{"problem": "p", "prompt": USER, "reasoning": REASONING,
                                              "answer": ANSWER}], eot, 4096, kind)
    completion_text = f"<think>\n{REASONING}\n</think>\n\n{ANSWER}{eot_text}"
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tok(completion_text, add_special_tokens=False)["input_ids"]
    assert too_long == 0
    labels, targets = labels_of(sample).tolist(), targets_of(sample).tolist()
    assert sample["input_ids"].tolist() == prompt_ids + completion_ids
    assert labels == [IGNORE] * len(prompt_ids) + completion_ids
    assert labels[-1] == eot.token_id          # the model learns to stop
    assert targets == labels[1:] + [IGNORE]
    trained = [t for t in labels if t != IGNORE]
    assert tok.decode(trained) == completion_text
    # The prompt trained on is the one generate and eval give the model, think block opened.
    assert render_prompt(tok, USER) == prompt_text + "<think>\n"


def test_long_traces_are_dropped_not_cut(tokenizers):
    tok = tokenizers("demo")
    eot = end_of_turn(tok, "demo")
    rows = [{"problem": "a", "prompt": "short", "reasoning": "1 + 1 = 2", "answer": "2"},
            {"problem": "b", "prompt": "long", "reasoning": " ".join(["1 + 1 = 2"] * 100), "answer": "2"}]
    samples, too_long = encode_traces(tok, rows, eot, 64, "demo")
    assert too_long == 1 and [s["problem"] for s in samples] == ["a"]


def test_a_template_that_drops_the_think_block_is_refused(tokenizers):
    tok = AutoTokenizer.from_pretrained(tokenizers("demo").name_or_path)
    tok.chat_template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + "
                         "m['content'].split('</think>')[-1] + '<|im_end|>\\n' }}{%- endfor %}"
                         "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    eot = end_of_turn(tok, "r1-distill-like")
    with pytest.raises(UserError, match="drops the reasoning"):
        encode_traces(tok, [{"problem": "p", "prompt": USER, "reasoning": REASONING, "answer": ANSWER}],
                      eot, 4096, "r1-distill-like")
