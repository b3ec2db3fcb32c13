"""What the matrix remembers between runs: each cell's key and outcome, in ``matrix.json``.

A cell's key covers everything its outcome depends on that the driver can see: the recipe as
resolved with the cell's overrides, the size and modification time of every file the recipe names
(calibration sets, corpora, label files), this project's source and the library versions. A
finished cell with the same key is reused as it is, without a task; the cell's own per-recipe cache
still reuses artifacts when a key changes.

``matrix.json`` is a sealed record (:mod:`pipeline.core.seal`): one that was edited, or that this tool
did not write, is ignored and every cell runs again. A cell entry of the wrong shape is ignored too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.core.seal import read_record
from pipeline.core.signature import named_files
from pipeline.core.store import canonical_json, sha256_text
from pipeline.core.versions import library_versions, source_digest
from pipeline.matrix.spec import Cell
from pipeline.recipe.load import Recipe

log = logging.getLogger(__name__)

FINAL_EXIT_CODES = (0, 1, 2)  # shipped, gate failed, bad input: running again would say the same
RECORD = "matrix.json"
WHAT = "matrix record"  # what a warning about an unsealed matrix.json calls it
Entry = dict[str, Any]  # one cell of matrix.json


def cell_key(recipe: Recipe, root: Path) -> str:
    """The reuse key of a cell whose recipe resolved to ``recipe``."""
    resolved = recipe.model_dump(mode="json")
    return sha256_text(canonical_json({"recipe": resolved, "files": named_files(resolved, root),
                                       "source": source_digest(), "versions": library_versions()}))


def names_cell(entry: Any) -> bool:
    """Whether ``entry`` is a cell entry that names its cell and model (all a report needs to show it)."""
    cell = entry.get("cell") if isinstance(entry, dict) else None
    return isinstance(cell, dict) and isinstance(cell.get("name"), str) and isinstance(cell.get("model"), str)


def entries(record: dict[str, Any] | None, where: Path | str) -> list[Entry]:
    """The cell entries of a matrix record that name their cell and model; the others are left out with
    a warning."""
    if record is None:
        return []
    found = record.get("cells")
    if not isinstance(found, list):
        log.warning("%s: 'cells' is not a list; no cell is taken from it", where)
        return []
    kept = [entry for entry in found if names_cell(entry)]
    if len(kept) < len(found):
        log.warning("%s: %d of %d cell entries are malformed; left out", where, len(found) - len(kept), len(found))
    return kept


def _dict_of_dicts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items())


def well_formed(entry: Entry) -> bool:
    """Whether every field of a cell entry that reuse takes has its type."""
    code = entry.get("exit_code")
    return (isinstance(entry.get("key"), str | None) and (code is None or type(code) is int)
            and isinstance(entry.get("message"), str) and _dict_of_dicts(entry.get("phases"))
            and isinstance(entry.get("summary"), dict) and isinstance(entry.get("reused", False), bool))


def reusable(saved: dict[str, Entry], cell: Cell, key: str) -> Entry | None:
    """The saved outcome of ``cell`` when it finished for good under the same key, else None."""
    entry = saved.get(cell.name)
    return entry if entry is not None and entry.get("key") == key else None


def load_saved(folder: Path) -> dict[str, Entry]:
    """Cell name -> its entry in the last matrix.json of this matrix, for the cells that finished for good
    (the first entry of a name); none when the record is missing, unsealed or edited."""
    path = folder / RECORD
    found = entries(read_record(path, WHAT), path)
    good = [entry for entry in found if well_formed(entry)]
    if len(good) < len(found):
        log.warning("%s: %d cell entries have fields of the wrong type; those cells run again", path,
                    len(found) - len(good))
    saved: dict[str, Entry] = {}
    for entry in good:
        if entry.get("key") is not None and entry.get("exit_code") in FINAL_EXIT_CODES:
            saved.setdefault(entry["cell"]["name"], entry)
    return saved
