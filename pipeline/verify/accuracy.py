"""Task accuracy on a labeled file: eager and every artifact, and their agreement with eager."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from pipeline.core.errors import RecipeError
from pipeline.core.limits import text_lines
from pipeline.model.inputs import Inputs, tokenize
from pipeline.recipe.schema import AccuracySpec


def load_labeled(path: Path, spec: AccuracySpec) -> tuple[list[str], list[str]]:
    """Texts and raw labels from a CSV (with a header) or JSONL file, the first ``spec.limit`` of them."""
    where = f"verify.accuracy.file: {spec.file}"
    lines = text_lines(path, where)  # read lazily within the limits of pipeline/core/limits.py
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = [json.loads(line) for line in lines if line.strip()]
        else:
            rows = list(csv.DictReader(lines))
    except (ValueError, csv.Error) as exc:
        raise RecipeError(f"{where}: cannot parse it ({exc})") from None
    rows = rows[: spec.limit] if spec.limit else rows
    if not rows:
        raise RecipeError(f"{where}: no examples in it")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or spec.text not in row or spec.label not in row:
            raise RecipeError(f"{where}: example {i + 1} lacks {spec.text!r} or {spec.label!r}")
    return [str(row[spec.text]) for row in rows], [str(row[spec.label]) for row in rows]


def label_ids(labels: list[str], label2id: dict[str, int] | None, num_labels: int) -> np.ndarray:
    """Class indices for labels given as indices or as names from the model's label2id."""
    names = {k.lower(): v for k, v in (label2id or {}).items()}
    out = []
    for label in labels:
        if label.strip().lstrip("-").isdigit() and 0 <= int(label) < num_labels:
            out.append(int(label))
        elif label.strip().lower() in names:
            out.append(names[label.strip().lower()])
        else:
            known = ", ".join(sorted(label2id or {})) or f"0..{num_labels - 1}"
            raise RecipeError(f"verify.accuracy: label {label!r} is not one of the model's labels ({known})")
    return np.asarray(out, dtype=np.int64)


def accuracy_batches(tokenizer: Any, texts: list[str], input_names: list[str], batch: int) -> list[Inputs]:
    """The labeled texts in order, batched and padded to the longest of each batch."""
    return [tokenize(tokenizer, texts[i:i + batch], input_names) for i in range(0, len(texts), batch)]


class AccuracyScore(TypedDict, total=False):
    """Task accuracy of one model on the labeled file, and (for an artifact) agreement with eager's predictions."""

    examples: int
    accuracy: float
    agreement: float


def score(predicted: list[np.ndarray], labels: np.ndarray, eager: list[np.ndarray] | None = None) -> AccuracyScore:
    """Accuracy of predicted logits batches against labels, and agreement with eager's predictions."""
    pred = np.concatenate([p.argmax(axis=-1) for p in predicted])
    out: AccuracyScore = {"examples": int(labels.size), "accuracy": float((pred == labels).mean())}
    if eager is not None:
        out["agreement"] = float((pred == np.concatenate([e.argmax(axis=-1) for e in eager])).mean())
    return out
