"""Parity metrics: only kept positions count; NaN, Inf and shape changes are caught."""

from __future__ import annotations

import numpy as np

from pipeline.verify.metrics import combine, compare


def test_padded_positions_are_not_compared() -> None:
    ref = np.ones((1, 4, 3), dtype=np.float32)
    out = ref.copy()
    out[0, 3] = 100.0
    mask = np.array([[1, 1, 1, 0]])
    m = compare(ref, out, mask)
    assert m["max_abs"] == 0.0 and m["positions"] == 3 and abs(m["cos_min"] - 1.0) < 1e-12
    assert compare(ref, out, np.ones((1, 4)))["max_abs"] == 99.0


def test_error_metrics_and_cosine() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 5, 8))
    out = ref + 0.01
    m = compare(ref, out, np.ones((2, 5)))
    assert abs(m["max_abs"] - 0.01) < 1e-9 and abs(m["mean_abs"] - 0.01) < 1e-9 and m["cos_min"] > 0.999
    assert m["sqnr_db"] > 30
    flipped = compare(ref, -ref, np.ones((2, 5)))
    assert flipped["cos_min"] < -0.99


def test_nan_inf_and_shape_mismatch() -> None:
    ref = np.zeros((1, 2, 2))
    out = ref.copy()
    out[0, 0, 0] = np.inf
    out[0, 1, 1] = np.nan
    m = compare(ref, out, np.ones((1, 2)))
    assert m["inf"] == 1 and m["nan"] == 1 and m["max_abs"] == float("inf")
    assert "shape_mismatch" in compare(ref, np.zeros((1, 3, 2)), np.ones((1, 2)))


def test_top1_agreement_for_logits() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert compare(ref, out, None, classification=True)["top1_agreement"] == 0.5


def test_combine_keeps_the_worst() -> None:
    worst = combine([{"max_abs": 1.0, "cos_min": 0.9, "nan": 1}, {"max_abs": 2.0, "cos_min": 0.95, "nan": 2}])
    assert worst == {"max_abs": 2.0, "cos_min": 0.9, "nan": 3}
