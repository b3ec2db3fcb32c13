"""The shape of the code: no import cycle between modules of pipeline/ and passes/, no import from a stage
to a stage above it, and the modules that listing passes and printing the schema need import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "passes")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str], type_only: bool = False) -> set[str]:
    """The project modules ``path`` imports at run time (anywhere in it), and with ``type_only`` also those
    it imports for type checking only."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if not type_only and _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the tree
    assert cycles(graph) == []


# The stages of pipeline/, top to bottom: a module imports only from its own stage and those below it
# (type-only imports included); passes/ sits beside engine/, under bench/ and above it.
STAGES = ("cli", "run", "matrix", "report", "ship", "bench", "verify", "engine", "recipe", "runtime", "model", "core")
PASSES_MAY_NOT_IMPORT = ("cli", "run", "matrix", "report", "ship", "bench")
def stage_of(module: str) -> str:
    parts = module.split(".")
    return "passes" if parts[0] == "passes" else (parts[1] if len(parts) > 2 else "")


def upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(module, imported module) pairs where a stage imports one above it."""
    found = set()
    for module, imported in graph.items():
        here = stage_of(module)
        for target in imported:
            there = stage_of(target)
            if here == there or "" in (here, there) or there == "passes":
                continue
            above = there in PASSES_MAY_NOT_IMPORT if here == "passes" else \
                here in STAGES and there in STAGES and STAGES.index(there) < STAGES.index(here)
            if above:
                found.add((module, ".".join(target.split(".")[:3])))
    return found


def test_no_stage_imports_a_stage_above_it() -> None:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {name: imports_of(path, set(files), type_only=True) for name, path in files.items()}
    assert upward(graph) == set(), "imports up the stage order"


def test_the_stage_check_finds_an_import_up() -> None:
    graph = {"pipeline.core.store": {"pipeline.report.write"}, "passes.x.y": {"pipeline.bench.spec"},
             "pipeline.report.write": {"pipeline.core.store"}}
    assert upward(graph) == {("pipeline.core.store", "pipeline.report.write"), ("passes.x.y", "pipeline.bench.spec")}


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("code", [
    "import pipeline.engine.pass_api",
    "import pipeline.engine.registry, pipeline.engine.chain, pipeline.recipe.load",
    "import pipeline.bench.worker, pipeline.runtime.runner",  # an ONNX target's worker loads no torch
    "from pipeline.cli import main; main(['list'])",
    "from pipeline.cli import main; main(['schema'])",
])
def test_the_pass_api_listing_and_onnx_workers_import_no_torch_or_onnx(code: str) -> None:
    probe = f"import sys, io, contextlib\nwith contextlib.redirect_stdout(io.StringIO()):\n    {code}\n" \
            "heavy = sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules)\n" \
            "assert not heavy, heavy"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
