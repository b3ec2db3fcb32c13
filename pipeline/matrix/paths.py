"""Where a matrix writes each cell (``cells/<cell>``, ``logs/<cell>.<phase>.log``), and the refusal, before
any task starts, of a cell whose folder or log the file system cannot hold."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import BadInputError
from pipeline.matrix.cell import PHASES, log_name
from pipeline.matrix.spec import Cell

CELLS = "cells"
LOGS = "logs"
NAME_MAX = 255  # bytes of one name: the common limit, and the one assumed where the file system does not say
PATH_MAX = 4096  # bytes of a whole path, likewise
CELL_RESERVE = 160  # bytes a cell's optimize run adds below its folder (step folders, files, temporaries)


def cell_folder(folder: Path, cell: str) -> Path:
    """The output folder of one cell's optimize run."""
    return folder / CELLS / cell


def log_folder(folder: Path) -> Path:
    """Where each phase of each cell writes its log."""
    return folder / LOGS


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def limits(folder: Path) -> tuple[int, int]:
    """The most bytes of one name and of a whole path below ``folder`` (its nearest existing ancestor's file
    system, at most NAME_MAX and PATH_MAX: the nodes of a cluster may not share it)."""
    anchor = _existing(folder)
    found = []
    for key, default in (("PC_NAME_MAX", NAME_MAX), ("PC_PATH_MAX", PATH_MAX)):
        try:
            value = os.pathconf(anchor, key)
        except (OSError, ValueError):
            value = default
        found.append(min(value, default) if value > 0 else default)
    return found[0], found[1]


def check_cell_paths(folder: Path, cells: list[Cell], where: str) -> None:
    """Refuse (exit 2, naming the cell and the limit) a cell whose folder or log name, or whose folder's
    path with what its run adds, is longer than the file system allows."""
    name_max, path_max = limits(folder)
    base = folder.absolute()
    for cell in cells:
        names = [("its folder name", cell.name), *(("the name of its log", log_name(cell.name, p)) for p in PHASES)]
        for what, name in names:
            size = len(os.fsencode(name))
            if size > name_max:
                raise BadInputError(f"{where}: cell {cell.name}: {what} is {size} bytes, more than the {name_max} "
                                    "this file system allows in a name; shorten the model's name or the labels")
        size = len(os.fsencode(str(cell_folder(base, cell.name)))) + CELL_RESERVE
        if size > path_max:
            raise BadInputError(f"{where}: cell {cell.name}: its folder's path is {size} bytes with the "
                                f"{CELL_RESERVE} its run adds, more than the {path_max} this file system allows; "
                                "give a shorter --out or shorter names")
