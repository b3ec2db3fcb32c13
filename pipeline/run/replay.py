"""An unchanged re-run answers from the record of the last one, without importing torch.

After every ``optimize`` that ends with a verdict (exit 0 or 1), the run writes ``.last-run.json`` into
its output folder: a digest of everything the run read, and what it printed. The next run computes the
same digest first, from light sources alone (the recipe as resolved with its overrides, the files it
names, the model's files, this project's source, the library versions and where each would be imported
from, the Python path, the machine, and every file already in the output folder); when nothing changed,
it prints the recorded summary and exits with the recorded code: nothing is rebuilt, verified,
measured, reported or copied. Any difference, down to one file's size, modification or change time or
inode in the output folder, runs the whole run as usual, where each stage's own cache decides what it
reuses. The record is sealed (pipeline.core.seal): an edited one is ignored, and the run runs.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelError
from pipeline.core.limits import usable_cores
from pipeline.core.seal import read_record, write_record
from pipeline.core.signature import folder_state, named_files
from pipeline.core.store import canonical_json, sha256_file, sha256_text
from pipeline.core.versions import import_origins, library_versions, source_digest
from pipeline.model.spec import packaged_path
from pipeline.recipe.load import Recipe

RECORD = ".last-run.json"
SKIPPED = {RECORD, ".lock"}
VERDICT_EXIT_CODES = (0, 1)
ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE", "PYTHONPATH",
               "PYTHONHOME", "LD_LIBRARY_PATH", "LD_PRELOAD")


def _source_state(source: str, base_dir: Path) -> dict[str, Any] | None:
    """The files a model or tokenizer comes from (``packaged:NAME``, a folder, a config or GGUF file), or None
    when they cannot be told cheaply (a hub id)."""
    if source.startswith("packaged:"):
        try:
            packaged = packaged_path(source.split(":", 1)[1])
        except ModelError:
            return None
        return {"file": sha256_file(packaged)} if packaged.is_file() else folder_state(packaged)
    path = Path(source) if Path(source).is_absolute() else base_dir / source
    if path.is_file():
        return {"config": sha256_file(path)}
    if path.is_dir():
        return folder_state(path)
    return None


def _model_state(recipe: Recipe, base_dir: Path) -> dict[str, Any] | None:
    """The files of the eager model and its tokenizer, or None when one cannot be told (a hub id, a factory)."""
    if recipe.model.source is None:
        return None
    state = {"model": _source_state(recipe.model.source, base_dir)}
    if recipe.model.tokenizer is not None:
        state["tokenizer"] = _source_state(recipe.model.tokenizer, base_dir)
    return None if None in state.values() else state


@functools.cache
def _machine() -> dict[str, Any]:
    from pipeline.bench.fingerprint import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable": usable_cores()}


def run_digest(recipe: Recipe, out_dir: Path, base_dir: Path, flags: dict[str, Any]) -> str | None:
    """The digest of everything an optimize run reads; None when the model's files cannot be told."""
    model = _model_state(recipe, base_dir)
    if model is None:
        return None
    resolved = recipe.model_dump(mode="json")
    return sha256_text(canonical_json({
        "recipe": resolved, "flags": flags, "files": named_files(resolved, base_dir), "model": model,
        "source": source_digest(), "versions": library_versions(), "imports": import_origins(),
        "python": sys.executable, "machine": _machine(),
        "environment": {key: os.environ.get(key) for key in ENVIRONMENT}, "out": str(out_dir.resolve()),
        "folder": folder_state(out_dir, SKIPPED) if out_dir.is_dir() else None,
    }))


def recorded(out_dir: Path, digest: str | None) -> dict[str, Any] | None:
    """The last run's record when it has this digest and ended with a verdict, else None."""
    if digest is None:
        return None
    record = read_record(out_dir / RECORD, "run record")
    if record is None or record.get("digest") != digest:
        return None
    if type(record.get("exit_code")) is not int or record["exit_code"] not in VERDICT_EXIT_CODES \
            or not isinstance(record.get("console"), str):
        return None
    return record


def remember(out_dir: Path, recipe: Recipe, base_dir: Path, flags: dict[str, Any], exit_code: int,
             console_text: str) -> None:
    """Write the record of a run that just ended, with the digest of the folder as it left it."""
    if exit_code not in VERDICT_EXIT_CODES or not out_dir.is_dir():
        return
    digest = run_digest(recipe, out_dir, base_dir, flags)
    if digest is not None:
        write_record(out_dir / RECORD, {"digest": digest, "exit_code": exit_code, "console": console_text})
