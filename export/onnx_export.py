"""ONNX through onnxruntime-genai's model builder, run offline on the local folder (its own
output, a line per node, goes to a log), then completed so that `onnxruntime_genai.Model` finds
the tokenizer, the chat template and our stop tokens.

The builder runs in this process: importing it costs seconds, building a small model a fraction
of one, and torch and transformers are loaded here already."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from distill.core.errors import UserError

from .quantize import log_tail, native_output_to

TOKENIZER_FILES = ("distill.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json")


def builder_available() -> bool:
    try:
        import onnx_ir  # noqa: F401  (the builder imports it at the top)
        import onnxruntime_genai.models.builder  # noqa: F401
    except ImportError:
        return False
    return True


# What each of our precisions asks the builder for. int4-int8head: k_quant_last quantizes the
# matrices with the builder's k-quant int4 and the last one (the head; on a tied model the shared
# embedding with it) at 8 bits. `matmul_mixed_precision=last_matmul:int8` alone built a tied model
# that does not load (a dangling input), so it is not used; rtn_last measured worse
# (docs/export.md, bench/bench_onnx.py).
INT8_HEAD_ALGO = "k_quant_last"


def builder_options(precision: str, block_size: int = 32, accuracy_level: int = 4) -> tuple[str, dict]:
    """(the builder's precision, the extra options we pass it) for one of our precisions; the
    extra options are what the manifest records as `onnx_options`."""
    if precision == "fp32":
        return "fp32", {}
    options = {"block_size": block_size, "accuracy_level": accuracy_level}
    if precision == "int4-int8head":
        options["algo_config"] = INT8_HEAD_ALGO
    return "int4", options


def build_onnx(folder: Path, out_dir: Path, precision: str, work: Path, log_path: Path,
               context_length: Optional[int] = None, trust_remote_code: bool = False,
               block_size: int = 32, accuracy_level: int = 4) -> None:
    if not builder_available():
        raise UserError("field 'onnx': the onnxruntime-genai model builder is not importable "
                        "(pip install onnxruntime-genai onnx-ir)")
    from onnxruntime_genai.models import builder

    cache = work / f"onnx-cache-{precision}"
    builder_precision, extra = builder_options(precision, block_size, accuracy_level)
    options = ["hf_token=false"] + (["hf_remote=true"] if trust_remote_code else []) + [
        f"{k}={v}" for k, v in extra.items()]
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        with native_output_to(log_path):
            parsed = builder.parse_extra_options(None, str(folder), str(out_dir), builder_precision, "cpu",
                                                 str(cache), options)
            builder.create_model(None, str(folder), str(out_dir), builder_precision, "cpu", str(cache), **parsed)
    except ValueError as e:
        if "algo_config" in extra and block_size != 32:
            # seen on SmolLM2 (576 columns): k_quant's reshape at block 64 fails in onnxruntime-genai 0.18
            raise UserError(f"field 'onnx_block_size': onnxruntime-genai's builder could not make {precision} "
                            f"with block size {block_size} for this model ({e}); block 32 works") from None
        raise RuntimeError(f"onnxruntime-genai's builder failed for {precision}: "
                           f"{type(e).__name__}: {e} | {log_tail(log_path)}") from e
    except Exception as e:  # noqa: BLE001 - the builder raises bare Exceptions; keep its message
        raise RuntimeError(f"onnxruntime-genai's builder failed for {precision}: "
                           f"{type(e).__name__}: {e} | {log_tail(log_path)}") from e
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(cache, ignore_errors=True)
    if not (out_dir / "genai_config.json").is_file():
        raise RuntimeError(f"onnxruntime-genai's builder wrote no genai_config.json: {log_tail(log_path)}")
    complete_folder(folder, out_dir, context_length)


def complete_folder(folder: Path, out_dir: Path, context_length: Optional[int]) -> None:
    """Tokenizer files and chat template beside the model, the student's stop tokens and the
    context length the target was checked for in genai_config.json."""
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(folder / name, out_dir / name)
    template_file = out_dir / "chat_template.jinja"
    config_file = out_dir / "tokenizer_config.json"
    if template_file.is_file() and config_file.is_file():
        # Older onnxruntime-genai releases read the template only from tokenizer_config.json.
        tok_config = json.loads(config_file.read_text(encoding="utf-8"))
        if not tok_config.get("chat_template"):
            tok_config["chat_template"] = template_file.read_text(encoding="utf-8")
            config_file.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    genai_file = out_dir / "genai_config.json"
    genai = json.loads(genai_file.read_text(encoding="utf-8"))
    eos = _generation_eos(folder)
    if eos:
        genai["model"]["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if context_length:
        genai["search"]["max_length"] = min(context_length, genai["model"].get("context_length", context_length))
    genai_file.write_text(json.dumps(genai, indent=4) + "\n", encoding="utf-8")


def _generation_eos(folder: Path) -> list[int]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    return [e for e in eos if isinstance(e, int)]
