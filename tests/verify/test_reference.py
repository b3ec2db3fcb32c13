"""The reference: computed once from a fresh eager model, reused while its key holds, computed again
when its files do not hold up, with batch-composition cases for encoders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import load_recipe
from pipeline.verify.cases import CaseKind
from pipeline.verify.reference import FILE, reference


def _setup(write_tiny_recipe: Callable[..., Path]) -> tuple[object, ModelHandle]:
    recipe = load_recipe(write_tiny_recipe("tiny", ["onnx_export"], verify={"shapes": [[2, 7]],
                                                                             "sentence_batches": 1}))
    handle = ModelHandle(recipe.model, recipe.task, recipe.inputs.names, recipe.output_names, Path.cwd())
    return recipe, handle


def test_it_is_reused_while_its_key_holds_and_recomputed_when_its_file_changes(
        write_tiny_recipe: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recipe, handle = _setup(write_tiny_recipe)
    folder = tmp_path / "reference"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        first = reference(recipe, handle, folder, tmp_path)
        again = reference(recipe, handle, folder, tmp_path)
        assert "reference: reused 19 cases" in caplog.text
        assert [c.name for c in again] == [c.name for c in first]
        assert all(np.array_equal(a.outputs[k], b.outputs[k]) for a, b in zip(first, again, strict=True)
                   for k in a.outputs)
        (folder / FILE).write_bytes((folder / FILE).read_bytes()[:-10])  # truncated
        caplog.clear()
        reference(recipe, handle, folder, tmp_path)
        assert "does not match its manifest" in caplog.text and "reference: computed 19 cases" in caplog.text
        assert "reference: reused" not in caplog.text


def test_it_holds_every_kind_of_case(write_tiny_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe, handle = _setup(write_tiny_recipe)
    cases = reference(recipe, handle, tmp_path / "reference", tmp_path)
    kinds = {case.kind for case in cases}
    assert kinds == {CaseKind.FORWARD, CaseKind.ALONE, CaseKind.PADDED}
    padded = next(case for case in cases if case.kind is CaseKind.PADDED)
    alone = [case for case in cases if case.kind is CaseKind.ALONE]
    assert padded.inputs["input_ids"].shape[0] == len(alone) == 16
    assert {"random_b2_s7", "sentences_0"} <= {case.name for case in cases}
