"""Config precedence (defaults < YAML < flags), type checking and error messages."""

from dataclasses import dataclass
from typing import Optional

import pytest

from distill.core.config import build_config, config_dict, load_config, option
from distill.core.errors import UserError


@dataclass
class Example:
    name: str = option("base", "a string")
    steps: int = option(10, "an int")
    lr: float = option(1e-4, "a float")
    lora: bool = option(False, "a bool")
    limit: Optional[int] = option(None, "an optional int")
    quants: list[str] = option(["f16"], "a list")
    api_key: Optional[str] = option(None, "a secret", secret=True)

    def check(self):
        if self.steps < 0:
            raise UserError("steps: must be >= 0")


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_given():
    cfg = load_config(Example)
    assert (cfg.name, cfg.steps, cfg.lr, cfg.lora, cfg.limit, cfg.quants) == ("base", 10, 1e-4, False, None, ["f16"])


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = write(tmp_path, "name: from-yaml\nsteps: 20\nlora: true\nquants: [q8_0, q4_k_m]\n")
    cfg = load_config(Example, path, {"steps": 30, "name": None})
    assert cfg.name == "from-yaml"          # flag not given (None) leaves the YAML value
    assert cfg.steps == 30                  # flag beats YAML
    assert cfg.lora is True and cfg.quants == ["q8_0", "q4_k_m"]
    assert cfg.lr == 1e-4                   # untouched default


def test_list_defaults_are_not_shared():
    a, b = load_config(Example), load_config(Example)
    a.quants.append("x")
    assert b.quants == ["f16"]


def test_types_are_coerced_and_checked(tmp_path):
    cfg = build_config(Example, {"steps": "5", "lr": 1, "limit": 3, "quants": "a,b"})
    assert cfg.steps == 5 and cfg.lr == 1.0 and cfg.quants == ["a", "b"]
    with pytest.raises(UserError, match=r"field 'steps': expected an integer"):
        load_config(Example, write(tmp_path, "steps: lots\n"))
    with pytest.raises(UserError, match=r"field 'lora': expected true or false"):
        build_config(Example, {"lora": "maybe"})


def test_unknown_field_names_the_file_and_field(tmp_path):
    path = write(tmp_path, "nmae: typo\n")
    with pytest.raises(UserError) as e:
        load_config(Example, path)
    assert str(path) in str(e.value) and "nmae" in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: ok\nsteps: [1, 2\n")
    with pytest.raises(UserError, match=r"line \d+: malformed YAML"):
        load_config(Example, path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        load_config(Example, tmp_path / "nope.yaml")


def test_check_runs_after_every_layer(tmp_path):
    with pytest.raises(UserError, match="steps: must be >= 0"):
        load_config(Example, None, {"steps": -1})


def test_secrets_are_left_out_of_the_resolved_config():
    cfg = build_config(Example, {"api_key": "sk-secret"})
    assert "api_key" not in config_dict(cfg)
    assert "sk-secret" not in str(config_dict(cfg))


def test_every_stage_config_builds_from_defaults():
    from distill.pipeline.stages import STAGES
    for stage in STAGES:
        cls = STAGES[stage].config
        assert cls.__name__.endswith("Config")
        for f in cls.__dataclass_fields__.values():
            assert f.metadata.get("help"), f"{stage}.{f.name} has no help text"
