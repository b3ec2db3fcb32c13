"""Progress of a running matrix: a live line per running cell on a terminal (rich), plain log lines
elsewhere (one when a phase starts, one when it ends)."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from pipeline.core.progress import interactive
from pipeline.matrix.cell import PhaseResult
from pipeline.matrix.spec import Cell

log = logging.getLogger("pipeline")


class Lines:
    """What runs where, shown as it changes; a context manager around the matrix's run."""

    def __init__(self, cells: list[Cell]) -> None:
        self.total = len(cells)
        self.done = 0
        self.running: dict[str, dict[str, Any]] = {}
        self.live: Any = None

    def __enter__(self) -> Lines:
        if interactive():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.__exit__(kind, exc, tb)

    def update(self, running: dict[str, dict[str, Any]]) -> None:
        """The board's latest snapshot: cell -> phase, node, pid, since."""
        for cell, what in running.items():
            if self.running.get(cell, {}).get("phase") != what["phase"] and self.live is None:
                log.info("matrix: %s %s started on node %s", cell, what["phase"], what["node"][:8])
        self.running = running
        if self.live is not None:
            self.live.update(self._table())

    def finished(self, result: PhaseResult, cell_done: bool) -> None:
        """A phase ended (and with it the cell, when ``cell_done``): one line with its exit code, message
        and time."""
        self.done += cell_done
        seconds = result.finished - result.started
        line = f"matrix: {result.cell} {result.phase} exit {result.exit_code} in {seconds:.0f} s: {result.message}"
        if self.live is not None:
            self.live.console.print(line)
        else:
            log.info("%s", line)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"matrix: {self.done}/{self.total} cells done", show_edge=False)
        for column in ("cell", "phase", "node", "running for"):
            table.add_column(column)
        now = time.time()
        for cell, what in sorted(self.running.items()):
            table.add_row(cell, what["phase"], what["node"][:8], f"{now - what['since']:.0f} s")
        return table
