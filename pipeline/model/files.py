"""Diagnoses for a model's files: which JSON file of a folder is broken, and an error's gist in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.core.errors import first_line

MODEL_JSON = ("generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


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
