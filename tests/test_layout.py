"""The house: the import graph of the installed package, read from the source with `ast` (every
import statement, those inside functions included; the repository's export/, eval/ and data/
folders mapped to distill.export, distill.eval and distill.data, as pyproject installs them).

- No import circles.
- Layers: distill.data (assets) < core < backends < the stages (generate, train, chat,
  export, eval) < demo (builds the demo models with the trainer) < the top (distill.pipeline <
  distill.cli < distill.__main__). A module imports only
  from lower layers or from its own room (its package); only the top imports distill.export and
  distill.eval.
- Each stage's `run` lives in `<stage>/stage.py` and is at most 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOTS = {"distill": REPO / "distill", "distill.export": REPO / "export", "distill.eval": REPO / "eval",
         "distill.data": REPO / "data"}
LAYERS = {"distill.data": 0, "distill.core": 1, "distill.backends": 2, "distill.generate": 3, "distill.train": 3,
          "distill.chat": 3, "distill.demo": 3.5, "distill.export": 3, "distill.eval": 3,
          "distill.pipeline": 4, "distill.cli": 5, "distill.__main__": 6, "distill": 6}
TOP = ("distill.cli", "distill.pipeline", "distill.__main__")


def modules() -> dict[str, Path]:
    found = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            if prefix == "distill" and len(parts) and parts[0] in ("export", "eval", "data"):
                continue  # not a folder of distill/ (they are the mapped roots)
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                out.add(target)
    return out


def room(name: str) -> str:
    """The package a module belongs to, at the granularity of LAYERS."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{name}: in no layer")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_the_mapped_folders_are_read(graph):
    for name in ("distill.export.stage", "distill.eval.stage", "distill.core.traces", "distill.pipeline.stages"):
        assert name in graph, name


def test_no_import_circle(graph):
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_imports_follow_the_layers(graph):
    wrong = []
    for name, targets in graph.items():
        mine = room(name)
        for target in targets:
            theirs = room(target)
            if theirs in ("distill.export", "distill.eval") and mine not in (theirs, *TOP) and \
                    not any(name == t or name.startswith(t + ".") for t in TOP):
                wrong.append(f"{name} -> {target} (only the top imports export and eval)")
            elif theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{name} -> {target} (layer {LAYERS[mine]} imports layer {LAYERS[theirs]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("stage", ["distill.generate", "distill.train", "distill.export", "distill.eval"])
def test_each_stage_runs_from_its_own_module_in_at_most_60_lines(stage):
    path = modules()[f"{stage}.stage"]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (run,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    length = run.end_lineno - run.lineno + 1
    assert length <= 60, f"{path}: run is {length} lines"
    init = modules()[stage]
    assert not [n for n in ast.parse(init.read_text()).body if not isinstance(n, ast.Expr)], \
        f"{init}: a stage's package __init__ holds only its docstring"
