"""Matrix tests: a matrix run without Ray (the sealing key is the test session's, from tests/conftest.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.matrix import cluster, run
from pipeline.matrix.cell import PhaseResult
from pipeline.matrix.run import CellOutcome
from pipeline.matrix.spec import Cell


@pytest.fixture(autouse=True)
def root_handlers() -> Iterator[None]:
    """The command line replaces the root logger's handlers; each test gets the ones it started with back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every cell's recipe passes its checks (key ``key-<cell>``, no benchmark) and every build ships,
    without Ray; returns the names of the cells that ran, in order."""
    ran: list[str] = []

    def check(cell: Cell, root: Path) -> CellOutcome:
        return CellOutcome(cell, f"key-{cell.name}", benchmarks=False)

    @contextmanager
    def connected(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
        yield type("FakeCluster", (), {"address": address or "fake"})()

    def run_cells(_: Any, cells: list[Cell], wants_bench: Callable[[Cell], bool], folder: Path, root: Path,
                  resources: Any, on_change: Callable[..., None], on_result: Callable[[PhaseResult], None]) -> None:
        for cell in cells:
            ran.append(cell.name)
            now = time.time()
            on_result(PhaseResult(cell.name, "build", 0, "shipped", "node-1", 1, now, now))

    monkeypatch.setattr(run, "_check_cell", check)
    monkeypatch.setattr(cluster, "connected", connected)
    monkeypatch.setattr(cluster, "run_cells", run_cells)
    return ran


@pytest.fixture
def write_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Writes ``m.yaml`` (default: models a and b of recipe r.yaml) in tmp_path, made current."""
    monkeypatch.chdir(tmp_path)

    def write(**body: Any) -> Path:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"name": "m", "recipe": "r.yaml", "models": {"a": {}, "b": {}}, **body},
                                       sort_keys=False))
        return path

    return write
