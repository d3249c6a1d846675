"""What ships beside the artifacts: manifest.json, the model card (README.md) with how to run each
artifact, an Ollama Modelfile, and optionally a .tar.gz per target."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import tarfile
from pathlib import Path
from typing import Optional

from distill.core.io import atomic_path, sha256_path, write_text
from distill.core.records import package_versions

from .profiles import Profile


def tool_versions() -> dict:
    versions = {k: v for k, v in package_versions().items() if v is not None}
    for name in ("onnx-ir", "safetensors", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def artifact_entry(out: Path, path: Path, fmt: str, quant: str, sha256: str) -> dict:
    return {"path": path.relative_to(out).as_posix(), "format": fmt, "quant": quant,
            "bytes": folder_bytes(path), "sha256": sha256}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def preferred_gguf(artifacts: list[dict], profile: Optional[Profile], chosen: Optional[dict] = None) -> Optional[dict]:
    ggufs = {a["quant"]: a for a in artifacts if a["format"] == "gguf"}
    # a fitted file was made for this budget: it is the one to run
    for quant in ["fit"] + ([chosen["quant"]] if chosen else []) + (profile.gguf if profile else []) + ["q4_k_m", "q8_0", "f16"]:
        if quant in ggufs:
            return ggufs[quant]
    return next(iter(ggufs.values()), None)


def preferred_onnx(artifacts: list[dict], profile: Optional[Profile]) -> Optional[dict]:
    onnx = {a["quant"]: a for a in artifacts if a["format"] == "onnx"}
    for precision in (profile.onnx if profile else []) + ["int4", "int4-int8head", "fp32"]:
        if precision in onnx:
            return onnx[precision]
    return None


def modelfile(gguf_artifact: dict, chat_template: str, context: int) -> str:
    """An Ollama Modelfile. Ollama templates are Go templates, so a ChatML template is spelled
    out (with the assistant turn opened by <think> as the student was trained); for any other
    template Ollama's own detection from the GGUF's chat template is used."""
    lines = [f"FROM ./{gguf_artifact['path']}", ""]
    if "<|im_start|>" in chat_template:
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
                  '{{ .Content }}<|im_end|>', '{{ end }}<|im_start|>assistant', '<think>', '"""',
                  'PARAMETER stop "<|im_end|>"']
    lines += [f"PARAMETER num_ctx {context}", "PARAMETER temperature 0.6", "PARAMETER top_p 0.95", ""]
    return "\n".join(lines)


def model_card(manifest: dict, profile: Optional[Profile], modelfile_written: bool) -> str:
    name = manifest["name"]
    source = manifest["source"]
    ctx = manifest["context_length"]
    threads = profile.threads if profile else 4
    rows = []
    for a in manifest["artifacts"]:
        v = a.get("validation") or {}
        status = "not run" if not v else ("passed" if v.get("passed") else "FAILED: " + "; ".join(v.get("failures", [])))
        extra = ""
        measured = v.get("vs_f16_heldout") or v.get("vs_f16")
        if measured:
            extra = f" (KL vs f16 {measured['mean_kld']:.4f}, top-1 {measured['top1_agreement']:.1%})"
        without = ((a.get("uncalibrated") or {}).get("validation") or {})
        measured = without.get("vs_f16_heldout") or without.get("vs_f16")
        if measured:
            extra += f"; without the importance matrix {measured['mean_kld']:.4f}, {measured['top1_agreement']:.1%}"
        fit = a.get("fit")
        fits = "" if not fit else (" | yes" if fit["fits"] else " | **no**")
        rows.append(f"| `{a['path']}` | {a['format']} | {a['quant']} | {_size(a['bytes'])} | {status}{extra}{fits} |")
    header = "| artifact | format | type | size | validation |" + (f" fits {profile.name} |" if profile else "")
    rule = "|---|---|---|---|---|" + ("---|" if profile else "")
    chosen = (manifest.get("target") or {}).get("chosen")
    gguf = preferred_gguf(manifest["artifacts"], profile, chosen)
    onnx = preferred_onnx(manifest["artifacts"], profile)
    parts = [
        f"# {name}", "",
        f"Exported by distill-edge from `{source['path']}` ({source['model_type']}, "
        f"{source['parameters']:,} parameters{', LoRA adapter merged' if source.get('lora_merged') else ''}).",
        ("Every artifact was checked against the source model; the numbers are in `manifest.json`."
         if manifest["validation"]["enabled"] else "Validation was turned off for this export."),
        "",
    ]
    if profile:
        parts += [f"Target: **{profile.name}** ({profile.description}); memory budget "
                  f"{_size(profile.memory_budget)}, context length {ctx}, {profile.threads} threads.", ""]
    parts += [header, rule, *rows, ""]
    parts += calibration_lines(manifest)
    if gguf:
        parts += ["## llama.cpp", "",
                  "The chat template is inside the GGUF file.", "", "```sh",
                  f"llama-cli -m {gguf['path']} -cnv -c {ctx} -t {threads}",
                  f"llama-server -m {gguf['path']} -c {ctx} -t {threads} --host 127.0.0.1 --port 8080",
                  "```", "",
                  "`llama-server` answers OpenAI-compatible requests at `http://127.0.0.1:8080/v1`.", ""]
        if modelfile_written:
            parts += ["## Ollama", "", "```sh", f"ollama create {name} -f Modelfile",
                      f"ollama run {name}", "```", "",
                      f"The `Modelfile` points at `{gguf['path']}`; edit its `FROM` line to use another type.", ""]
        parts += ["## Python (llama-cpp-python)", "", "```python", "from llama_cpp import Llama", "",
                  f"llm = Llama(\"{gguf['path']}\", n_ctx={ctx}, n_threads={threads})",
                  "reply = llm.create_chat_completion(messages=[{\"role\": \"user\", \"content\": \"What is 17 + 25?\"}])",
                  "print(reply[\"choices\"][0][\"message\"][\"content\"])", "```", ""]
    if onnx:
        parts += ["## onnxruntime-genai", "", "```python", "import json", "import onnxruntime_genai as og", "",
                  f"model = og.Model(\"{onnx['path']}\")", "tokenizer = og.Tokenizer(model)",
                  "prompt = tokenizer.apply_chat_template(json.dumps([{\"role\": \"user\", \"content\": \"What is 17 + 25?\"}]),",
                  "                                       add_generation_prompt=True) + \"<think>\\n\"",
                  "params = og.GeneratorParams(model)",
                  "params.set_search_options(max_length=1024, do_sample=True, temperature=0.6, top_p=0.95)",
                  "generator = og.Generator(model, params)", "generator.append_tokens(tokenizer.encode(prompt))",
                  "stream = tokenizer.create_stream()", "while not generator.is_done():",
                  "    generator.generate_next_token()",
                  "    print(stream.decode(generator.get_next_tokens()[0]), end=\"\", flush=True)", "```", ""]
    parts += ["## Reasoning format", "",
              "The model thinks inside `<think> ... </think>` and then answers; prompts that open the "
              "assistant turn with `<think>\\n` (as the Modelfile and the snippet above do) match how it was trained.", ""]
    return "\n".join(parts)


def write_tarball(out: Path, tar_path: Path, members: list[str]) -> dict:
    with atomic_path(tar_path) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for rel in members:
                tar.add(out / rel, arcname=f"{tar_path.name[:-len('.tar.gz')]}/{rel}")
    return {"path": tar_path.name, "bytes": tar_path.stat().st_size, "sha256": sha256_path(tar_path),
            "members": members}


def usual_permissions(folder: Path) -> None:
    """Temporary files and folders are created private (0600/0700); the finished export gets the
    permissions the user's umask gives any new file, so that a service account (Ollama,
    llama-server) or a tarball's recipient can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_card_files(out: Path, manifest: dict, profile: Optional[Profile], chat_template: str) -> list[str]:
    """README.md and (with a GGUF) Modelfile; returns their names."""
    written = []
    gguf = preferred_gguf(manifest["artifacts"], profile, (manifest.get("target") or {}).get("chosen"))
    if gguf:
        write_text(out / "Modelfile", modelfile(gguf, chat_template, manifest["context_length"]))
        written.append("Modelfile")
    write_text(out / "README.md", model_card(manifest, profile, bool(gguf)))
    written.append("README.md")
    return written


def chat_template_of(folder: Path) -> str:
    """The chat template as transformers saves it (chat_template.jinja) or as older versions did
    (inside tokenizer_config.json)."""
    import json
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return ""


def calibration_lines(manifest: dict) -> list[str]:
    """What the card says about the importance matrix, the measurements and the chosen type."""
    lines = []
    calibration = manifest.get("calibration")
    if calibration:
        matrix = calibration["imatrix"]
        computed = (f"computed on {calibration['texts']} texts ({calibration['tokens']:,} tokens) of "
                    f"`{calibration['source']}`" if calibration["kind"] != "imatrix"
                    else f"read from `{calibration['source']}`")
        lines += [f"The quantized files were made with an importance matrix (`{matrix['path']}`, {computed}, "
                  f"sha256 `{matrix['sha256'][:16]}`); `llama-quantize --imatrix {matrix['path']}` reuses it."]
        if calibration["heldout_texts"]:
            lines += [f"KL divergences are measured against the f16 file on {calibration['heldout_texts']} held-out "
                      f"calibration texts ({calibration['heldout_tokens']:,} tokens) that the matrix never saw."]
        lines += [""]
    chosen = (manifest.get("target") or {}).get("chosen")
    if chosen:
        lines += [f"Recommended for {manifest['target']['name']}: **{chosen['quant']}** (`{chosen['path']}`), "
                  f"{chosen['reason']}.", ""]
    if manifest.get("plot"):
        lines += [f"![KL divergence from f16 against file size]({manifest['plot']})", ""]
    return lines


def plot_kld_vs_size(entries: list[dict], path: Path, name: str) -> Optional[Path]:
    """KL divergence from f16 against file size, one point per quantized GGUF, with the importance
    matrix (filled) and without (hollow, from --imatrix-compare). None when nothing was measured."""
    def kld(validation):
        measured = (validation or {}).get("vs_f16_heldout") or (validation or {}).get("vs_f16")
        return None if not measured else max(measured["mean_kld"], 1e-6)

    points = []
    for e in entries:
        if e["format"] == "gguf" and kld(e.get("validation")) is not None:
            points.append((e["quant"], e["bytes"], kld(e["validation"]), bool(e.get("imatrix"))))
        without = e.get("uncalibrated")
        if without and kld(without.get("validation")) is not None:
            points.append((e["quant"], without["bytes"], kld(without["validation"]), False))
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for calibrated, style in ((True, dict(color="tab:blue", label="with the importance matrix")),
                              (False, dict(facecolors="none", edgecolors="tab:orange", label="without"))):
        chosen = [p for p in points if p[3] == calibrated]
        if chosen:
            ax.scatter([p[1] / 1024**2 for p in chosen], [p[2] for p in chosen], s=40, **style)
            for quant, size, value, _ in chosen:
                ax.annotate(quant, (size / 1024**2, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence from f16 (nats)")
    ax.set_title(f"{name}: quantization loss against size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
