"""Bundled assets: the demo task, demo models, prompt templates and device profiles."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def asset(*parts: str) -> Path:
    return DATA_DIR.joinpath(*parts)
