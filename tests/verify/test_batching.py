"""Batch invariance: a row's output alone and inside a padded batch, in the reference and at the gate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.model.inputs import load_sentences
from pipeline.runtime.runner import Runner
from pipeline.verify.batching import batch_case_inputs, invariance
from pipeline.verify.cases import Case, CaseKind

TINY = {"shapes": [[1, 9]], "sentence_batches": 1}


def _cases(tokenizer: Any, count: int = 4, length: int = 48) -> list[Case]:
    inputs = batch_case_inputs(tokenizer, load_sentences(), ["input_ids", "attention_mask"], count, length, seed=0)
    return [Case(name, batch, {}, kind) for name, (kind, batch) in inputs.items()]


def _per_row(cases: list[Case], mix: float) -> list[dict[str, np.ndarray]]:
    """Outputs of a made-up model: each token's embedding, plus ``mix`` times the batch's mean."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((30522, 8)).astype(np.float32)
    outputs = []
    for case in cases:
        hidden = table[case.inputs["input_ids"]]
        outputs.append({"last_hidden_state": hidden + mix * hidden.mean(axis=(0, 1), keepdims=True)})
    return outputs


def test_the_batch_cases_hold_each_sentence_alone_and_all_of_them_padded(tiny_handle: Any) -> None:
    cases = _cases(tiny_handle.tokenizer)
    alone = [c for c in cases if c.kind is CaseKind.ALONE]
    padded = [c for c in cases if c.kind is CaseKind.PADDED]
    assert len(alone) == 4 and len(padded) == 1 and padded[0].inputs["input_ids"].shape == (4, 48)
    for row, case in enumerate(alone):
        length = case.inputs["attention_mask"].sum()
        assert case.inputs["attention_mask"].all() and length < 48  # no padding alone, far less than the batch's
        assert (padded[0].inputs["input_ids"][row, :length] == case.inputs["input_ids"][0]).all()


def test_a_row_wise_model_is_invariant_and_a_batch_wide_one_is_not(tiny_handle: Any) -> None:
    cases = _cases(tiny_handle.tokenizer)
    assert invariance(cases, _per_row(cases, 0.0))["last_hidden_state"]["cos_min"] > 0.999999
    assert invariance(cases, _per_row(cases, 0.5))["last_hidden_state"]["cos_min"] < 0.99
    assert invariance([c for c in cases if c.kind is not CaseKind.PADDED], _per_row(cases, 0.5)[:-1]) == {}


def _batch_dependent(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make ``step``'s artifact add a share of its batch's mean to every row: right alone, wrong in a batch."""
    real = Runner.open

    def open_(self: Runner, artifact: Any) -> Callable[..., dict[str, np.ndarray]]:
        fn = real(self, artifact)
        if artifact.step_folder != step:
            return fn

        def mixed(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = fn(inputs)
            return {k: v + 0.3 * v.mean(axis=(0, 1), keepdims=True) - 0.3 * v.mean(axis=(1,), keepdims=True)
                    for k, v in out.items()}
        return mixed

    monkeypatch.setattr(Runner, "open", open_)


def test_the_gate_fails_a_batch_dependent_artifact_and_a_relaxed_recipe_ships_it_saying_so(
        write_tiny_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    loose = {"steps": {"onnx_export": {"tolerance": {"max_abs": 100.0, "min_cosine": -1.0}}}}
    recipe = write_tiny_recipe("tiny", ["onnx_export"], verify={**TINY, **loose})
    _batch_dependent(monkeypatch, "01_onnx_export")
    assert main(["optimize", str(recipe), "--no-bench"]) == 1
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    failures = report["artifacts"][0]["parity"]["failures"]
    assert failures and all("batch invariance" in line for line in failures), failures
    assert "batch invariance" in capsys.readouterr().out

    assert main(["optimize", str(recipe), "--no-bench",
                 "--set", "verify.steps.onnx_export.tolerance.min_batch_cosine=-1"]) == 0
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    measured = report["artifacts"][0]["parity"]["batch_invariance"]["last_hidden_state"]["cos_min"]
    assert report["shipped"] and measured < 0.9999
    assert "output depends on its batch" in Path("artifacts/tiny/report.md").read_text()
