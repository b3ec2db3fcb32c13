"""Batch invariance: a row's output must not depend on the other rows of its batch or on the padding.

The reference holds each of a few corpus sentences alone (batch 1, no padding) and the same sentences
together in one batch padded far past their length, as a server pads to a bucket. Both are compared
with eager as every case is; and an artifact's own output for a sentence alone is compared with its
output for the same row inside the padded batch, over the positions the attention mask keeps. One
activation scale over a whole tensor (onnxruntime's dynamic int8) fails this; per-row and per-group
quantization, fp32 and fp16 meet it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.model.inputs import Inputs, tokenize
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.metrics import combine, compare

MASK = "attention_mask"


def padded_length(recipe: Any, max_positions: int | None) -> int:
    """The length the batch case is padded to: the recipe's, else the longest sequence it uses."""
    spec = recipe.verify.batch_cases
    longest = spec.padded_to or max([recipe.inputs.export_seq, *(seq for _, seq in recipe.verify.shapes),
                                     *recipe.bench.seqs])
    return min(longest, max_positions) if max_positions else longest


def batch_case_inputs(tokenizer: Any, sentences: Sequence[str], names: Sequence[str], count: int, length: int,
                      seed: int) -> dict[str, tuple[CaseKind, Inputs]]:
    """``alone_<i>`` for each of ``count`` sentences drawn with ``seed``, and one ``padded_b<n>_s<length>``
    batch of them all; sentences longer than ``length`` are truncated to it in both."""
    rng = np.random.default_rng(seed + 1)
    picked = [sentences[i] for i in rng.permutation(len(sentences))[:count]]
    cases: dict[str, tuple[CaseKind, Inputs]] = {
        f"alone_{i}": (CaseKind.ALONE, tokenize(tokenizer, [text], names, max_length=length))
        for i, text in enumerate(picked)}
    cases[f"padded_b{len(picked)}_s{length}"] = (CaseKind.PADDED, tokenize(tokenizer, picked, names, seq=length))
    return cases


def invariance(cases: Sequence[Case], outputs: Sequence[dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Per output, the metrics of every row computed alone against the same row in the padded batch
    (empty when the reference has no batch cases)."""
    padded = [i for i, case in enumerate(cases) if case.kind is CaseKind.PADDED]
    alone = [i for i, case in enumerate(cases) if case.kind is CaseKind.ALONE]
    if not padded or not alone:
        return {}
    batch_case, batch_out = cases[padded[0]], outputs[padded[0]]
    table: dict[str, list[dict[str, Any]]] = {}
    for row, index in enumerate(alone):
        for name, value in outputs[index].items():
            if name not in batch_out:
                continue
            solo = _kept(np.asarray(value)[0], cases[index].inputs.get(MASK), 0)
            in_batch = _kept(np.asarray(batch_out[name])[row], batch_case.inputs.get(MASK), row)
            table.setdefault(name, []).append(compare(solo, in_batch, None))
    return {name: combine(rows) for name, rows in table.items()}


def _kept(row: np.ndarray, mask: np.ndarray | None, index: int) -> np.ndarray:
    """One row's output at the positions its mask keeps (the whole row when it has no position axis)."""
    if mask is None or row.ndim == 0 or row.shape[0] != mask.shape[1]:
        return row.reshape(1, -1)
    return row[mask[index].astype(bool)].reshape(int(mask[index].sum()), -1)


def failures(metrics: dict[str, dict[str, Any]], bound_of: Any) -> list[str]:
    """Each output whose rows alone and in a padded batch differ more than its bound allows."""
    missed = []
    for name, m in metrics.items():
        bound = bound_of(name)
        if bound is not None and m.get("cos_min", -1.0) < bound:
            missed.append(f"{name}: batch invariance cos_min {m.get('cos_min', -1.0):.6f} < {bound:.6f} (a row's "
                          f"output alone and inside a padded batch differ: it depends on its batch-mates)")
    return missed
