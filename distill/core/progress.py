"""Rich progress bars and console output that `--quiet` silences in one place."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

T = TypeVar("T")
QUIET = False
console = Console(stderr=True)


def set_quiet(quiet: bool) -> None:
    global QUIET
    QUIET = quiet


def info(message: str) -> None:
    if not QUIET:
        console.print(message, highlight=False)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator:
    """Yield an `advance(n=1)` callable backed by a rich progress bar (no-op when quiet or when
    stderr is not a terminal and the job is short)."""
    if QUIET:
        yield lambda n=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(description, total) as advance:
        for item in items:
            yield item
            advance()
