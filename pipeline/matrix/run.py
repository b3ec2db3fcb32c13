"""``python -m pipeline matrix MATRIX.yaml``: every cell of a matrix as Ray tasks, top to bottom.

The order matters: the output folder and every cell's paths are checked and every cell's recipe is
loaded and checked first (a bad one is recorded with exit 2 and its message, and never becomes a task);
then, holding the folder's lock, cells that finished for good under the same key are reused without
starting Ray at all; the rest run on the cluster, and matrix.json (a sealed record) is rewritten after
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
from pipeline.core.output_folder import MATRIX_FOLDERS, check_output_folder, claimed
from pipeline.core.seal import write_record
from pipeline.core.store import json_safe
from pipeline.engine.chain import build_steps
from pipeline.matrix.cell import PhaseResult, plain
from pipeline.matrix.paths import check_cell_paths
from pipeline.matrix.progress import Lines
from pipeline.matrix.report import write_matrix_report
from pipeline.matrix.spec import Cell, MatrixSpec, cells, load_matrix
from pipeline.matrix.state import RECORD, cell_key, load_saved, reusable
from pipeline.recipe.load import load_recipe

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

    def record(self) -> dict[str, Any]:
        """What matrix.json holds: the matrix and every cell's outcome as known now."""
        return json_safe({
            "matrix": self.spec.name, "description": self.spec.description, "file": self.path.as_posix(),
            "compare": self.spec.compare, "address": self.address, "started": self.started,
            "cells": [outcome.as_json() for outcome in self.outcomes.values()]})

    def write(self) -> None:
        """Rewrite matrix.json, sealed, with what is known now."""
        write_record(self.folder / RECORD, self.record())

    def reuse_finished(self) -> None:
        """Take the outcome of every cell that finished for good under the same key from the last run."""
        saved = load_saved(self.folder)
        for outcome in self.outcomes.values():
            previous = reusable(saved, outcome.cell, outcome.key) if outcome.key else None
            if previous is not None:
                outcome.exit_code, outcome.message = previous["exit_code"], previous["message"]
                outcome.phases, outcome.summary, outcome.reused = previous["phases"], previous["summary"], True


def _check_cell(cell: Cell, root: Path) -> CellOutcome:
    """Load and check the cell's recipe here; a bad one ends the cell with exit 2 and its message."""
    try:
        recipe = load_recipe(cell.recipe, list(cell.overrides))
        build_steps(recipe)
    except PipelineError as exc:
        where = "" if str(cell.recipe) in str(exc) else f"recipe {cell.recipe}: "
        return CellOutcome(cell, None, exc.exit_code, plain(f"error: {where}{exc}"))
    return CellOutcome(cell, cell_key(recipe, root), benchmarks=recipe.bench.enabled)


def prepare_matrix(path: Path, out: Path | None, root: Path, force: bool = False) -> MatrixRun:
    """The matrix with its output folder and every cell's paths and recipe checked; nothing is written."""
    spec = load_matrix(path)
    folder = out if out is not None else root / "artifacts" / "matrix" / spec.name
    check_output_folder(folder, out, force)
    made = cells(spec)
    check_cell_paths(folder, made, f"matrix {path}")
    return MatrixRun(spec, path, folder, {cell.name: _check_cell(cell, root) for cell in made})


def run_matrix(path: Path, address: str | None = None, out: Path | None = None, num_cpus: int | None = None,
               root: Path | None = None, force: bool = False) -> int:
    """Run the matrix file at ``path`` (on the Ray cluster at ``address``, else a local instance) into its
    folder (``out``, else artifacts/matrix/<name>; ``force`` to write into a folder this tool did not make);
    write matrix.json, matrix.md and plots; return the largest exit code of its cells."""
    if address is not None:
        from pipeline.matrix.cluster import parse_address

        parse_address(address)
    root = root or Path.cwd()
    run = prepare_matrix(path, out, root, force)
    run.address = address
    with claimed(run.folder, run.spec.name, MATRIX_FOLDERS):
        run.reuse_finished()
        return _run_claimed(run, address, num_cpus, root)


def _run_claimed(run: MatrixRun, address: str | None, num_cpus: int | None, root: Path) -> int:
    """Run the cells still to run, with the folder's lock held; write the record and the report."""
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
    report = write_matrix_report(run.folder, run.record())
    log.info("matrix report: %s", report)
    return max((3 if o.exit_code is None else o.exit_code for o in run.outcomes.values()), default=0)
