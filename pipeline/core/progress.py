"""Progress of long stages: a rich progress bar (what runs, time left) on a terminal, plain log lines
elsewhere (pipes, CI)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger("pipeline")


class Advance(Protocol):
    def __call__(self, what: str) -> None: ...


def interactive() -> bool:
    """Whether to draw bars: stderr is a terminal and this is not CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def stage(name: str, total: int) -> Iterator[Advance]:
    """A stage of ``total`` items; call the yielded function with what starts next."""
    if not interactive():
        count = 0

        def advance_plain(what: str) -> None:
            nonlocal count
            count += 1
            log.info("%s %d/%d: %s", name, count, total, what)

        yield advance_plain
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(name, total=total)
        started = False

        def advance_bar(what: str) -> None:
            nonlocal started
            if started:
                progress.advance(task)
            started = True
            progress.update(task, description=f"{name}: {what}")

        yield advance_bar
        progress.update(task, completed=total, description=f"{name}: done")
