"""The arrays a decoder peer's own environment reads and writes: the reference's prompt and window
inputs in, its greedy tokens and window likelihoods out (.npz, ``<case>/...`` keys). Imports numpy and
the standard library only, so that every environment can use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
GENERATE, PERPLEXITY = "generate", "perplexity"  # pipeline.verify.cases.CaseKind values


def save_inputs(path: Path, cases: list[tuple[str, str, Arrays]]) -> None:
    """(case, kind, inputs) as ``<case>/<kind>/<input>``."""
    arrays: Any = {f"{name}/{kind}/{key}": value for name, kind, inputs in cases for key, value in inputs.items()}
    np.savez(path, **arrays)


def load_inputs(path: Path) -> list[tuple[str, str, Arrays]]:
    """What ``save_inputs`` wrote, in its order."""
    found: dict[tuple[str, str], Arrays] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            name, kind, item = key.split("/", 2)
            found.setdefault((name, kind), {})[item] = data[key]
    return [(name, kind, inputs) for (name, kind), inputs in found.items()]


def save_outputs(path: Path, tokens: dict[str, np.ndarray], windows: dict[str, Arrays]) -> None:
    """Greedy tokens per prompt case (``<case>/tokens``) and each window case's outputs (``<case>/<key>``)."""
    arrays: Any = {f"{name}/tokens": value for name, value in tokens.items()}
    arrays.update({f"{name}/{key}": value for name, out in windows.items() for key, value in out.items()})
    np.savez(path, **arrays)


def load_outputs(path: Path, prompts: list[str], texts: list[str]) -> tuple[list[np.ndarray], list[Arrays]]:
    """The tokens of the ``prompts`` cases and the outputs of the ``texts`` cases, in those orders."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    tokens = [arrays[f"{name}/tokens"] for name in prompts]
    windows = [{key.split("/", 1)[1]: value for key, value in arrays.items() if key.split("/", 1)[0] == name}
               for name in texts]
    return tokens, windows
