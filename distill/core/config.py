"""One typed dataclass per stage is the single source of truth for its settings.

Precedence: dataclass defaults < YAML file < command-line flags. Unknown keys and values of
the wrong type are user errors that name the file and the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

C = TypeVar("C")


def option(default: Any = None, help: str = "", *, input: bool = False, secret: bool = False,
           **kwargs) -> Any:
    """A config field. `input=True` marks a path whose content hash goes into the stage record
    (and decides whether `distill run` may skip the stage); `secret=True` keeps the value out of
    records, logs and model cards."""
    metadata = {"help": help, "input": input, "secret": secret}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata,
                                 **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` to the annotated type `tp`, or raise UserError naming `where`."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: a value is required")
    origin = typing.get_origin(inner)
    if origin is list:
        (item_tp,) = typing.get_args(inner) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if inner is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{path}: {line}malformed YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config fields at the top level")
    return data


def build_config(cls: type[C], values: dict | None = None, *, source: str = "config",
                 base: C | None = None) -> C:
    """Apply `values` on top of `base` (or the defaults), checking names and types."""
    values = dict(values or {})
    types_ = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        norm = key.replace("-", "_")
        if norm not in names:
            known = ", ".join(sorted(names))
            raise UserError(f"{source}: unknown field '{key}' (known fields: {known})")
    current = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        norm = key.replace("-", "_")
        current[norm] = coerce(value, types_[norm], f"{source}: field '{norm}'")
    cfg = cls(**current)
    check = getattr(cfg, "check", None)
    if callable(check):
        check()
    return cfg


def load_config(cls: type[C], yaml_path: str | Path | None = None,
                overrides: dict | None = None) -> C:
    """Defaults, then the YAML file, then flag overrides (only the flags actually given)."""
    cfg = build_config(cls, {}, source=cls.__name__) if yaml_path is None else build_config(
        cls, load_yaml(yaml_path), source=str(yaml_path))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides:
        cfg = build_config(cls, overrides, source="command line", base=cfg)
    return cfg


def config_dict(cfg: Any, *, redact: bool = True) -> dict:
    """The resolved config as plain data; secret fields are dropped."""
    out = {}
    for f in dataclasses.fields(cfg):
        if redact and f.metadata.get("secret"):
            continue
        value = getattr(cfg, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def input_fields(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("input") and getattr(cfg, f.name) not in (None, "", [])}
