"""What the matrix remembers between runs: each cell's key and outcome, in ``matrix.json``.

A cell's key covers everything its outcome depends on that the driver can see: the recipe as
resolved with the cell's overrides, the size and modification time of every file the recipe names
(calibration sets, corpora, label files), this project's source and the library versions. A
finished cell with the same key is reused as it is, without a task; the cell's own per-recipe cache
still reuses artifacts when a key changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.signature import named_files
from pipeline.core.store import canonical_json, read_json, sha256_text
from pipeline.core.versions import library_versions, source_digest
from pipeline.matrix.spec import Cell
from pipeline.recipe.load import Recipe

FINAL_EXIT_CODES = (0, 1, 2)  # shipped, gate failed, bad input: running again would say the same


def cell_key(recipe: Recipe, root: Path) -> str:
    """The reuse key of a cell whose recipe resolved to ``recipe``."""
    resolved = recipe.model_dump(mode="json")
    return sha256_text(canonical_json({"recipe": resolved, "files": named_files(resolved, root),
                                       "source": source_digest(), "versions": library_versions()}))


def reusable(saved: dict[str, Any] | None, cell: Cell, key: str) -> dict[str, Any] | None:
    """The saved outcome of ``cell`` when it finished for good under the same key, else None."""
    if not saved:
        return None
    entry = next((c for c in saved.get("cells", []) if c.get("cell", {}).get("name") == cell.name), None)
    if entry and entry.get("key") == key and entry.get("exit_code") in FINAL_EXIT_CODES:
        return entry
    return None


def load_saved(folder: Path) -> dict[str, Any] | None:
    """The last matrix.json of this matrix, if any."""
    return read_json(folder / "matrix.json")
