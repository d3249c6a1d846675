"""eval asks each model the way it was trained to be asked (the template and think setting that
train recorded and export carried), unless --prompt-template / --no-think say otherwise; a
--no-think response is its answer alone."""

from __future__ import annotations

import json

from distill.core.chat import load_prompt_template
from distill.core.config import build_config
from distill.eval.config import EvalConfig
from distill.eval.scoring import score_response
from distill.eval.stage import plan_rows


def _folder(tmp_path, name, recorded=None):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if recorded is not None:
        (folder / "distill.json").write_text(json.dumps(recorded))
    return folder


def test_each_model_is_asked_as_it_was_trained(tmp_path):
    taught = _folder(tmp_path, "taught", {"prompt_template": "Q: {problem}", "think": False})
    plain = _folder(tmp_path, "plain")
    config = build_config(EvalConfig, dict(model=[f"hf:{taught}", f"hf:{plain}"], label=["taught", "plain"]))
    rows = plan_rows(config, [("taught", f"hf:{taught}", "hf", str(taught)), ("plain", f"hf:{plain}", "hf", str(plain))],
                     "demo", load_prompt_template("r1"))
    assert (rows["taught"][0].template, rows["taught"][0].think) == ("Q: {problem}", False)
    assert (rows["plain"][0].template, rows["plain"][0].think) == (load_prompt_template("r1"), True)
    assert rows["taught"][0].key != rows["plain"][0].key
    forced = build_config(EvalConfig, dict(model=[f"hf:{taught}"], prompt_template="plain", think=True))
    (row,) = plan_rows(forced, [("taught", f"hf:{taught}", "hf", str(taught))], "demo", "")["taught"]
    assert (row.template, row.think) == ("{problem}", True)


def test_a_no_think_response_is_its_answer():
    text = "The answer is \\boxed{7}."
    assert score_response(text, "7", "", "stop", think=False)["format_valid"] is True
    assert score_response(text, "7", "", "stop", think=True)["format_valid"] is False
    assert score_response(text, "7", "", "stop", think=False)["correct"] is True
