"""KD teachers are compared with the student by tokenizer, not by embedding size."""

import pytest
from transformers import AutoTokenizer

from distill.core.errors import UserError
from distill.core.tokenizers import require_same_tokenizer
from distill.train.models import load_model_config

from tests.conftest import DEMO_TOKENIZER


def test_the_same_tokenizer_passes_whatever_the_padded_vocabulary(tiny_model):
    student = AutoTokenizer.from_pretrained(tiny_model("qwen2"))
    teacher = AutoTokenizer.from_pretrained(tiny_model("qwen3_moe"))
    require_same_tokenizer(student, teacher, "teacher-dir")


def test_another_tokenizer_is_refused(smollm2_dir):
    student = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    with pytest.raises(UserError, match="teacher: smol: its tokenizer differs from the student's \\(vocabulary"):
        require_same_tokenizer(student, AutoTokenizer.from_pretrained(smollm2_dir), "smol")


def test_one_extra_special_token_is_enough_to_differ():
    student = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    teacher = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    teacher.add_tokens(["<tool_call>"], special_tokens=True)
    with pytest.raises(UserError, match="special tokens"):
        require_same_tokenizer(student, teacher, "t")


def test_a_folder_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import DistilBertConfig
    DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(tmp_path / "enc")
    with pytest.raises(UserError, match="'distilbert' model is not a causal language model"):
        load_model_config(str(tmp_path / "enc"), "student", False)
    with pytest.raises(UserError, match="student: .*not a model folder"):
        load_model_config(str(DEMO_TOKENIZER), "student", False)
    with pytest.raises(UserError, match="no such folder"):
        load_model_config(str(tmp_path / "missing"), "student", False)


def test_the_end_of_turn_token_becomes_the_eos_and_old_stops_are_kept(tmp_path):
    import json

    from distill.core.traces import end_of_turn
    from distill.train.models import finish_model_folder

    from .helpers import tokenizer_folder
    tok = AutoTokenizer.from_pretrained(tokenizer_folder("llama3", tmp_path))  # base eos <|end_of_text|>
    eos, eot = tok.eos_token_id, end_of_turn(tok, "llama3")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": eos, "use_cache": False}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "temperature": 0.6}))
    finish_model_folder(folder, tok, eot)
    generation = json.loads((folder / "generation_config.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert eot.text == "<|eot_id|>" and generation["eos_token_id"] == [eot.token_id, eos]
    assert generation["temperature"] == 0.6 and config["eos_token_id"] == eot.token_id and config["use_cache"]
    assert AutoTokenizer.from_pretrained(folder).eos_token == "<|eot_id|>"
