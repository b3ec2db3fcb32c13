"""A step's gate (what a repairing pass checks its candidates with): the step's own tolerance for the
candidate's precision, on the run's cases; a candidate that misses fails with the metric named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.core.artifact import Artifact
from pipeline.engine.chain import build_steps
from pipeline.engine.pass_api import PassContext
from pipeline.recipe.load import parse_recipe
from pipeline.runtime.runner import Runner
from pipeline.verify.cases import Case
from pipeline.verify.gate import step_gate


def _cases(ctx: PassContext) -> list[Case]:
    eager = Runner(ctx.model).open_eager()
    return [Case(f"b{batch}s{seq}", inputs, dict(eager(inputs)))
            for batch, seq in ((1, 9), (3, 21)) for inputs in [ctx.sample_inputs(batch, seq)]]


def _gate(ctx: PassContext, tiny_bert_config: Path, verify: dict | None = None):
    recipe = parse_recipe({"model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
                           "task": "feature-extraction", "passes": ["onnx_export"], "verify": verify or {}}, "r")
    (step,) = build_steps(recipe)
    return step_gate(recipe, ctx.model, step, _cases(ctx))


def _scaled_copy(artifact: Artifact, factor: float, out: Path) -> Path:
    """The model with its largest initializer scaled: a candidate far from eager."""
    assert artifact.path is not None
    model = onnx.load(str(artifact.path))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * factor, largest.name))
    onnx.save(model, str(out))
    return out


def test_the_export_passes_its_gate_at_other_shapes(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                     tiny_bert_config: Path) -> None:
    assert tiny_onnx.path is not None
    verdict = _gate(tiny_ctx, tiny_bert_config)(tiny_onnx.path, "fp32")
    assert verdict.passed and verdict.failures == []
    assert verdict.cos_min > 0.9999 and verdict.max_abs < 1e-3


def test_a_candidate_far_from_eager_fails_naming_the_metric(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                            tiny_bert_config: Path, tmp_path: Path) -> None:
    verdict = _gate(tiny_ctx, tiny_bert_config)(_scaled_copy(tiny_onnx, 1.5, tmp_path / "far.onnx"), "fp32")
    assert not verdict.passed and verdict.max_abs > 1e-3
    assert any("max_abs" in line or "cos" in line for line in verdict.failures)


def test_the_tolerance_is_the_step_s_own_for_the_candidate_s_precision(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                                      tiny_bert_config: Path, tmp_path: Path) -> None:
    near = _scaled_copy(tiny_onnx, 1.0005, tmp_path / "near.onnx")
    assert not _gate(tiny_ctx, tiny_bert_config)(near, "fp32").passed  # fp32's bound is tight
    loose = {"steps": {"onnx_export": {"outputs": {"last_hidden_state": {"max_abs": 1.0, "min_cosine": 0.9}}}}}
    assert _gate(tiny_ctx, tiny_bert_config, loose)(near, "fp32").passed
    assert _gate(tiny_ctx, tiny_bert_config)(near, "int8").passed  # int8's default bound holds a small drift
