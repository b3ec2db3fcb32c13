"""Diagnoses for a model's files: which is not a regular file, which JSON file of a folder is broken, and an
error's gist in one line."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import BinaryIO

from pipeline.core.errors import ModelError, RecipeError, first_line
from pipeline.core.limits import open_regular

MODEL_JSON = ("generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# what a loader may read from a model folder: configs, weights, tokenizer files (vocab.txt, spiece.model)
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".txt", ".model")
ANY_SIZE = 1 << 62
GGUF_SUFFIX = ".gguf"


def open_model_file(path: Path, where: str) -> BinaryIO:
    """``path`` opened for reading in binary; ModelError naming ``where`` when it is missing, unreadable or
    not a regular file (a folder, a FIFO, a device: a FIFO does not block)."""
    try:
        return open_regular(path, where, ANY_SIZE)
    except RecipeError as exc:
        raise ModelError(str(exc)) from None


def check_regular(path: Path, where: str) -> None:
    """ModelError naming ``where`` unless ``path`` is a regular file that can be opened (links followed)."""
    open_model_file(path, where).close()


def check_model_folder(folder: Path, where: str) -> None:
    """ModelError naming the file when an entry of ``folder`` that a loader may read (a config, weights, a
    tokenizer file) is not a regular file; ``where`` is how the folder is named (``model.source: ./m``)."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:
        return  # no folder to read: the caller says what is missing
    for name in names:
        if name.endswith(MODEL_FILE_SUFFIXES):
            check_regular(folder / name, f"{where.rstrip('/')}/{name}")


def model_file_sha256(path: Path, where: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a model file, refusing (ModelError) one that is not a regular file instead of hanging."""
    digest = hashlib.sha256()
    with open_model_file(path, where) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def reason(exc: BaseException) -> str:
    """An error's type and the first sentence of its message, for a one-line report."""
    text = ANSI_ESCAPE.sub("", str(exc)).strip()
    if not text:
        return type(exc).__name__
    sentence = re.split(r"(?<=\.)\s", text.splitlines()[0], maxsplit=1)[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence}"


def json_problem(path: Path) -> str | None:
    """Why a JSON file cannot be read ("is not valid JSON (...)"), or None when it parses."""
    try:
        json.loads(path.read_bytes())
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:  # also bytes that are not text
        return f"is not valid JSON ({first_line(exc)})"
    return None


def first_broken_json(folder: Path, names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, problem) of the first of these JSON files in ``folder`` that does not parse."""
    for name in names:
        problem = json_problem(folder / name) if (folder / name).is_file() else None
        if problem:
            return name, problem
    return None


def gguf_file_type(path: Path) -> str | None:
    """The quantization a GGUF file stores its weights in (``Q4_1``, ``F16``), from its header; None when
    the file does not say or cannot be read."""
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(path)).fields.get("general.file_type")
        if field is None:
            return None
        name = LlamaFileType(int(field.parts[field.data[0]][0])).name
    except Exception:  # noqa: BLE001 - a header that cannot be read only leaves the quantization unsaid
        return None
    return name.removeprefix("MOSTLY_")
