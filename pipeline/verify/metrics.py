"""Parity metrics between an artifact's outputs and a reference, over the positions the mask keeps.

Padded positions are not compared: what a model computes there is never used, and reduced
precision errors there are several times larger than on real tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

EPS = 1e-12


def kept_rows(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """2-D view (positions x features) of an output, keeping only positions where the mask is 1.

    Outputs shaped (batch, seq, ...) are masked per token; (batch, ...) outputs keep every row.
    """
    value = np.asarray(value, dtype=np.float64)
    if mask is not None and value.ndim >= 2 and value.shape[:2] == mask.shape:
        return value[mask.astype(bool)].reshape(-1, int(np.prod(value.shape[2:], dtype=np.int64)) or 1)
    if value.ndim == 0:
        return value.reshape(1, 1)
    return value.reshape(value.shape[0], -1)


def compare(reference: np.ndarray, actual: np.ndarray, mask: np.ndarray | None,
            classification: bool = False) -> dict[str, Any]:
    """Every parity metric of ``actual`` against ``reference`` over kept positions."""
    if reference.shape != actual.shape:
        return {"shape_mismatch": f"{list(actual.shape)} instead of {list(reference.shape)}",
                "nan": 0, "inf": 0, "max_abs": math.inf, "cos_min": -1.0, "positions": 0}
    ref, out = kept_rows(reference, mask), kept_rows(actual, mask)
    nan, inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
    finite = np.isfinite(out).all(axis=1)
    err = np.abs(ref - out)
    metrics: dict[str, Any] = {"positions": int(ref.shape[0]), "nan": nan, "inf": inf}
    if not finite.all() or ref.size == 0:
        metrics.update(max_abs=math.inf, mean_abs=math.inf, p99_abs=math.inf, max_rel=math.inf,
                       cos_min=-1.0, cos_mean=-1.0, sqnr_db=-math.inf)
    else:
        dot = (ref * out).sum(axis=1)
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        cos = np.where(norms > EPS, dot / np.maximum(norms, EPS), np.where(np.abs(ref).max(axis=1) < EPS, 1.0, 0.0))
        noise = float((err**2).sum())
        metrics.update(
            max_abs=float(err.max()), mean_abs=float(err.mean()), p99_abs=float(np.percentile(err, 99)),
            max_rel=float((err / np.maximum(np.abs(ref), 1e-6 * max(float(np.abs(ref).max()), EPS))).max()),
            cos_min=float(cos.min()), cos_mean=float(cos.mean()),
            sqnr_db=float(10 * math.log10(max(float((ref**2).sum()), 1e-30) / noise)) if noise > 0 else math.inf,
        )
    if classification and ref.ndim == 2 and ref.shape[1] > 1:
        metrics["top1_agreement"] = float((ref.argmax(axis=1) == out.argmax(axis=1)).mean()) if finite.all() else 0.0
    return metrics


WORST: dict[str, Callable[[list[Any]], Any]] = {
    "max_abs": max, "mean_abs": max, "p99_abs": max, "max_rel": max, "nan": sum, "inf": sum, "positions": sum,
    "cos_min": min, "cos_mean": min, "sqnr_db": min, "top1_agreement": min}


def worst(metrics: dict[str, dict[str, Any]], key: str, reducer: Callable[[list[Any]], Any]) -> Any:
    """The worst value of one metric over every output (None when absent)."""
    values = [m[key] for m in metrics.values() if key in m]
    return reducer(values) if values else None


def combine(per_case: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst case over many inputs: the largest errors, the smallest similarities, summed counts."""
    out: dict[str, Any] = {}
    for key, reducer in WORST.items():
        values = [m[key] for m in per_case if key in m]
        if values:
            out[key] = reducer(values)
    mismatches = [m["shape_mismatch"] for m in per_case if "shape_mismatch" in m]
    if mismatches:
        out["shape_mismatch"] = mismatches[0]
    return out
