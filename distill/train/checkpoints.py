"""Checkpoints in OUT/checkpoints, and resuming from the last complete one.

The Trainer writes a checkpoint in several files; a kill in the middle leaves a folder that looks
like a checkpoint but is not. A marker written after the Trainer reports the save as finished
tells complete checkpoints apart, and carries a fingerprint of the run, so that a changed command
starts over instead of resuming someone else's optimizer state."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from distill.core.io import write_json
from distill.core.progress import info

MARKER = "distill-complete.json"
_STEP = re.compile(r"checkpoint-(\d+)")


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP.fullmatch(p.name))]
    return sorted(found)


def _fingerprint_of(checkpoint: Path) -> str | None:
    try:
        return json.loads((checkpoint / MARKER).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        return None


def resume_point(folder: Path, fingerprint: str, resume: bool) -> Path | None:
    """The newest complete checkpoint of this same run, if resuming."""
    if not resume:
        return None
    for _, path in reversed(_checkpoints(folder)):
        if _fingerprint_of(path) == fingerprint:
            return path
    return None


def clear_unusable(folder: Path, keep: Path | None) -> None:
    """Remove the checkpoints a resume from `keep` must not see: incomplete ones, those of another
    run, and those after it; all of them when starting over. Main process only."""
    if keep is None:
        if _checkpoints(folder):
            info(f"starting over: the checkpoints in {folder} are incomplete, from another configuration, "
                 "or --no-resume was given")
        shutil.rmtree(folder, ignore_errors=True)
        return
    mine = _fingerprint_of(keep)
    keep_step = int(_STEP.fullmatch(keep.name).group(1))
    for step, path in _checkpoints(folder):
        if step > keep_step or _fingerprint_of(path) != mine:
            shutil.rmtree(path, ignore_errors=True)


class MarkCompleteCheckpoints(TrainerCallback):
    """Writes the marker once the Trainer has finished writing a checkpoint."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                write_json(path / MARKER, {"fingerprint": self.fingerprint, "step": state.global_step})
        return control


def announce_resume(path: Path | None) -> None:
    if path is not None:
        info(f"[green]↻[/] resuming from {path}")
