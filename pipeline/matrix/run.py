"""``python -m pipeline matrix MATRIX.yaml``: every cell of a matrix as Ray tasks, top to bottom.

The order matters: every cell's recipe is loaded and checked first (a bad one is recorded with exit 2
and its message, and never becomes a task); cells that finished for good under the same key are
reused without starting Ray at all; the rest run on the cluster, and matrix.json is rewritten after
every phase, so an interrupted matrix keeps what finished. The exit code is the largest of the cells'
(0 when every cell shipped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.store import json_safe, write_json_atomic
from pipeline.matrix.cell import PhaseResult
from pipeline.matrix.progress import Lines
from pipeline.matrix.report import write_matrix_report
from pipeline.matrix.spec import Cell, MatrixSpec, cells, load_matrix
from pipeline.matrix.state import cell_key, load_saved, reusable
from pipeline.recipe.load import build_steps, load_recipe

log = logging.getLogger(__name__)


@dataclass
class CellOutcome:
    """One cell's record in matrix.json: its key, exit code and message, and each phase's result."""

    cell: Cell
    key: str | None
    exit_code: int | None = None  # None: not finished
    message: str = ""
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    reused: bool = False
    benchmarks: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"cell": self.cell.as_json(), "key": self.key, "exit_code": self.exit_code, "message": self.message,
                "phases": self.phases, "summary": self.summary, "reused": self.reused}

    def record(self, result: PhaseResult) -> None:
        """Take in a finished phase: a build that did not ship, or the benchmark, ends the cell."""
        self.phases[result.phase] = result.as_json()
        if result.summary:
            self.summary = result.summary
        if result.phase == "bench" or result.exit_code != 0 or not self.benchmarks:
            self.exit_code, self.message = result.exit_code, result.message


@dataclass
class MatrixRun:
    """A matrix being run: its spec, its folder, and every cell's outcome."""

    spec: MatrixSpec
    path: Path
    folder: Path
    outcomes: dict[str, CellOutcome]
    address: str | None = None
    started: float = field(default_factory=time.time)

    def write(self) -> None:
        """Rewrite matrix.json with what is known now."""
        write_json_atomic(self.folder / "matrix.json", json_safe({
            "matrix": self.spec.name, "description": self.spec.description, "file": self.path.as_posix(),
            "compare": self.spec.compare, "address": self.address, "started": self.started,
            "cells": [outcome.as_json() for outcome in self.outcomes.values()]}))


def _check_cell(cell: Cell, root: Path) -> CellOutcome:
    """Load and check the cell's recipe here; a bad one ends the cell with exit 2 and its message."""
    try:
        recipe = load_recipe(cell.recipe, list(cell.overrides))
        build_steps(recipe)
    except PipelineError as exc:
        where = "" if str(cell.recipe) in str(exc) else f"recipe {cell.recipe}: "
        return CellOutcome(cell, None, exc.exit_code, f"error: {where}{exc}")
    return CellOutcome(cell, cell_key(recipe, root), benchmarks=recipe.bench.enabled)


def prepare_matrix(path: Path, out: Path | None, root: Path) -> MatrixRun:
    """The matrix with every cell checked, and the finished ones taken from the last run."""
    spec = load_matrix(path)
    folder = out if out is not None else root / "artifacts" / "matrix" / spec.name
    saved = load_saved(folder)
    outcomes = {}
    for cell in cells(spec):
        outcome = _check_cell(cell, root)
        previous = reusable(saved, cell, outcome.key) if outcome.key else None
        if previous is not None:
            outcome.exit_code, outcome.message = previous["exit_code"], previous["message"]
            outcome.phases, outcome.summary, outcome.reused = previous["phases"], previous["summary"], True
        outcomes[cell.name] = outcome
    return MatrixRun(spec, path, folder, outcomes)


def run_matrix(path: Path, address: str | None = None, out: Path | None = None, num_cpus: int | None = None,
               root: Path | None = None) -> int:
    """Run the matrix file at ``path`` (on the Ray cluster at ``address``, else a local instance);
    write matrix.json, matrix.md and plots; return the largest exit code of its cells."""
    root = root or Path.cwd()
    run = prepare_matrix(path, out, root)
    run.address = address
    run.folder.mkdir(parents=True, exist_ok=True)
    todo = [o.cell for o in run.outcomes.values() if o.exit_code is None]
    for outcome in run.outcomes.values():
        if outcome.reused:
            log.info("matrix: %s reused (exit %d)", outcome.cell.name, outcome.exit_code)
        elif outcome.exit_code is not None:
            log.warning("matrix: %s: %s", outcome.cell.name, outcome.message)
    run.write()
    if todo:
        from pipeline.matrix.cluster import connected, run_cells

        with connected(address, num_cpus) as cluster, Lines(todo) as lines:
            run.address = cluster.address

            def on_result(result: PhaseResult) -> None:
                run.outcomes[result.cell].record(result)
                lines.finished(result, run.outcomes[result.cell].exit_code is not None)
                run.write()

            run_cells(cluster, todo, lambda cell: run.outcomes[cell.name].benchmarks, run.folder, root,
                      run.spec.resources, lines.update, on_result)
    run.write()
    report = write_matrix_report(run.folder)
    log.info("matrix report: %s", report)
    return max((3 if o.exit_code is None else o.exit_code for o in run.outcomes.values()), default=0)
