"""The gate on synthetic outputs: every bound names what missed and by how much, padding is never
compared, the parent comparison and blame, and an artifact that cannot run fails there."""

from __future__ import annotations

import numpy as np

from pipeline.recipe.schema import Tolerance
from pipeline.verify.cases import Case
from pipeline.verify.parity import blame, check, run_cases

FP32 = Tolerance(max_abs=1e-4, min_cosine=0.99999)


def _case(name: str = "c", padded: bool = True) -> Case:
    rng = np.random.default_rng(0)
    mask = np.ones((2, 5), dtype=np.int64)
    if padded:
        mask[1, 3:] = 0
    hidden = rng.standard_normal((2, 5, 4)).astype(np.float32)
    return Case(name, {"input_ids": np.ones((2, 5), dtype=np.int64), "attention_mask": mask}, {"h": hidden})


def test_an_exact_copy_passes_and_padding_is_not_compared() -> None:
    case = _case()
    out = case.outputs["h"].copy()
    out[1, 3:] = 1e6  # what a model computes at padded positions is never used
    parity = check([case], [{"h": out}], None, lambda _name: FP32)
    assert parity.passed and parity.metrics["h"]["max_abs"] == 0.0 and parity.metrics["h"]["positions"] == 8


def test_each_missed_bound_is_named_with_its_margin() -> None:
    case = _case()
    out = case.outputs["h"] + np.float32(1e-3)
    parity = check([case], [{"h": out}], None, lambda _name: FP32)
    assert not parity.passed
    assert any(line.startswith("h: max_abs 0.001 > 0.0001 (by ") for line in parity.failures), parity.failures


def test_a_missing_output_and_a_nan_fail() -> None:
    case = _case()
    missing = check([case], [{}], None, lambda _name: FP32)
    assert not missing.passed and "h: shape missing output" in missing.failures
    out = case.outputs["h"].copy()
    out[0, 0, 0] = np.nan
    nan = check([case], [{"h": out}], None, lambda _name: FP32)
    assert not nan.passed and any("NAN" in line for line in nan.failures)


def test_blame_names_the_step_that_added_the_most_error_over_its_parent() -> None:
    case = _case()
    a = case.outputs["h"] + np.float32(1e-3)
    b = a + np.float32(1e-2)
    parities = {"first": check([case], [{"h": a}], [case.outputs], lambda _n: FP32),
                "second": check([case], [{"h": b}], [{"h": a}], lambda _n: FP32)}
    found = blame(parities, {"first": "eager", "second": "first"})
    assert found is not None and found["step"] == "second" and found["parent"] == "first"
    assert abs(found["max_abs_added"] - 1e-2) < 1e-5


def test_a_case_an_artifact_cannot_run_is_one_line_naming_the_case() -> None:
    def broken(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ValueError("bad shape\nmore detail")

    outputs, errors = run_cases(broken, [_case("sentences_0")])
    assert outputs == [{}] and errors == ["case sentences_0 (2x5): does not run: ValueError: bad shape"]
