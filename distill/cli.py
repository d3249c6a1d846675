"""`distill`: the command-line face of the four stages. Thin on purpose: each stage command's
flags are generated from that stage's config dataclass, and the command only loads the config
(defaults < --config YAML < flags) and calls the stage's `run`."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from distill.chat import ChatConfig
from distill.chat import run as run_chat
from distill.core.config import field_types, load_config
from distill.core.errors import EXIT_GATE, EXIT_INTERNAL, EXIT_USER, GateFailed, UserError, one_line
from distill.core.progress import set_quiet
from distill.data import asset
from distill.pipeline import PipelineConfig
from distill.pipeline import run as run_pipeline_file
from distill.pipeline.stages import STAGES

app = typer.Typer(
    help="Distil a large reasoning model into small models that run on laptops and Raspberry Pis.\n\n"
         "Stages: generate -> train -> export -> eval; `run` runs a pipeline file, `demo` the bundled one, "
         "`chat` talks to a model.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})

EXAMPLES = {
    "generate": "distill generate --teacher openai:https://api.deepseek.com --model deepseek-reasoner "
                "--api-key-env DEEPSEEK_API_KEY --prompts openai/gsm8k:main@train --n 4 --out traces",
    "train": "distill train --student Qwen/Qwen2.5-1.5B-Instruct --traces traces --out student "
             "--lora --lr 2e-4 --epochs 3\n\n    (multi-GPU: accelerate launch --config_file "
             "\"$(python -m distill.data accelerate/ddp.yaml)\" -m distill train ...)",
    "export": "distill export --model student --out export --target rpi5-8gb",
    "eval": "distill eval --model hf:student --model gguf:export/model-q4_k_m.gguf "
            "--label student --label q4 --benchmark gsm8k --limit 200 --out eval",
}
SUMMARIES = {
    "generate": "Sample verified <think> traces from a teacher (hf:, openai:, gguf:).",
    "train": "Fine-tune a dense student on the traces (SFT or logit distillation, LoRA or full).",
    "export": "Export the student to GGUF and ONNX, check each artifact, package per device.",
    "eval": "Accuracy, fidelity and speed of models and artifacts, with CI gates.",
}


def _report_errors(action: Callable[[], Any], debug: bool) -> Any:
    """Map the stage's failures to exit codes: 2 user error, 3 gate failed, 1 anything else."""
    try:
        return action()
    except (UserError, GateFailed) as e:
        if debug:
            traceback.print_exc()
        kind = "error" if isinstance(e, UserError) else "gate failed"
        typer.echo(f"{kind}: {one_line(e)}", err=True)
        raise typer.Exit(EXIT_USER if isinstance(e, UserError) else EXIT_GATE)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - the last line of defence, turned into exit 1
        if debug:
            traceback.print_exc()
        else:
            typer.echo(f"internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug "
                       "for the traceback)", err=True)
        raise typer.Exit(EXIT_INTERNAL)


def _flag_type(tp: Any) -> Any:
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union,) else tp
    if str(inner).startswith("list") or typing.get_origin(inner) is list:
        return Optional[List[str]]
    return Optional[inner]


def _stage_command(stage: str) -> Callable:
    return _config_command(STAGES[stage].config, stage, lambda cfg: STAGES[stage].run(cfg))


def _config_command(cls: type, name: str, run: Callable[[Any], Any], arguments: tuple[str, ...] = ()) -> Callable:
    """A command whose flags are the fields of the config dataclass `cls` (the fields named in
    `arguments` are positional) and which calls `run(config)`."""
    types_ = field_types(cls)

    def command(**kwargs):
        config_file, debug, quiet = kwargs.pop("config"), kwargs.pop("debug"), kwargs.pop("quiet")
        set_quiet(quiet)
        for f in dataclasses.fields(cls):  # `--gguf f16,q8_0` and `--gguf f16 --gguf q8_0` alike
            if isinstance(kwargs.get(f.name), list):
                kwargs[f.name] = [p.strip() for item in kwargs[f.name] for p in item.split(",") if p.strip()] or None

        _report_errors(lambda: run(load_config(cls, config_file, kwargs)), debug)

    params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--config", "-c", help="YAML file of config fields (flags override it)")),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--debug", help="Show full tracebacks")),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--quiet", "-q", help="No progress bars")),
    ]
    positional = []
    for f in dataclasses.fields(cls):
        tp = _flag_type(types_[f.name])
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if tp == Optional[bool] else [flag]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata.get('help', '')} [default: {default!r}]"
        if f.name in arguments:
            positional.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=str,
                                                default=typer.Argument(..., metavar=f.name.upper(), help=f.metadata.get("help", ""))))
            continue
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=tp,
                                        default=typer.Option(None, *decls, help=help_, show_default=False)))
    command.__signature__ = inspect.Signature(positional + params)
    command.__name__ = name
    return command


for _stage in ("generate", "train", "export", "eval"):
    app.command(_stage, help=f"{SUMMARIES[_stage]}\n\nExample:\n\n    {EXAMPLES[_stage]}",
                short_help=SUMMARIES[_stage])(_stage_command(_stage))


app.command("chat", short_help="Talk to a model (GGUF, ONNX, hf folder, openai: URL) in the terminal.",
            help="Talk to a model in the terminal with its own chat template: the reply streams as it is "
                 "decoded, the thinking dimmed and the answer plain, and the conversation is kept. "
                 "--prompt TEXT answers once (the answer on stdout, the thinking on stderr), for scripts."
                 "\n\nExample:\n\n    distill chat demo-run/export/demo-student-q4_k_m.gguf --think-budget 256")(
    _config_command(ChatConfig, "chat", run_chat, arguments=("model",)))


@app.command("run", short_help="Run the stages a pipeline YAML lists into one run directory.",
             help="Run the stages a pipeline YAML lists, in order, into one run directory "
                  "(DIR/traces, DIR/student, DIR/export, DIR/eval). A rerun skips every stage whose "
                  "config and inputs are unchanged.\n\nExample:\n\n    distill run pipeline.yaml --out runs/gsm8k")
def run_pipeline(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML: one section per stage"),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory"),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Run only these stages (repeatable)"),
    force: bool = typer.Option(False, "--force", help="Rerun stages even when unchanged"),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars"),
) -> None:
    set_quiet(quiet)
    _report_errors(lambda: run_pipeline_file(PipelineConfig(str(pipeline), str(out), list(stage or []), force)), debug)


@app.command("demo", short_help="Run the whole pipeline offline on a CPU with the bundled models.",
             help="The whole pipeline offline on a laptop CPU: the bundled MoE teacher writes traces for "
                  "the demo task, a small dense student learns from them (SFT, then on-policy distillation "
                  "from the teacher), is exported to GGUF and ONNX, "
                  "and every model is evaluated on the test split.\n\nExample:\n\n    distill demo --out demo-run\n\n    distill demo --seed 1 --out demo-run-seed1")
def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="Run directory"),
    quick: bool = typer.Option(False, "--quick", help="Shrink every stage (for CI)"),
    force: bool = typer.Option(False, "--force", help="Rerun stages even when unchanged"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every stage (default: the pipeline's, 0)"),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars"),
) -> None:
    set_quiet(quiet)
    pipeline = asset("pipelines", "demo-quick.yaml" if quick else "demo.yaml")
    _report_errors(lambda: run_pipeline_file(PipelineConfig(str(pipeline), str(out), [], force, seed)), debug)


def main() -> None:
    """The `distill` command. Once the command is done, the process ends at once instead of
    tearing the interpreter down: unloading torch and transformers takes 1-1.5 s (measured with
    `python -X importtime` and a timed exit), more than some commands' own work, and by then
    every output is written, closed and renamed into place."""
    try:
        app()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
