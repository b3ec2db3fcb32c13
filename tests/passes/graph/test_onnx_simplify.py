"""Tests of the onnx_simplify pass: fewer nodes, dynamic dims kept, and a numeric check that bites."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from passes._support.onnx_io import max_abs_diff, save_model
from passes.graph import onnx_simplify
from passes.graph.onnx_simplify import OnnxSimplifyConfig, OnnxSimplifyPass
from pipeline.core.artifact import Artifact
from pipeline.engine.pass_api import PassContext, PassOutput
from pipeline.engine.postconditions import graph_dims
from pipeline.runtime.runner import run_onnx


def _run(ctx: PassContext, parent: Artifact, out: Path, **config: object) -> PassOutput:
    out.mkdir()
    return OnnxSimplifyPass(OnnxSimplifyConfig(**config)).run(parent, ctx, out)


def _rewrite_after_simplify(monkeypatch: pytest.MonkeyPatch, edit: object) -> None:
    """Make the simplifier's output pass through ``edit(model)`` before the pass checks it."""
    real = onnx_simplify.simplify_file

    def tampered(src: Path, dst: Path, cfg: OnnxSimplifyConfig) -> None:
        real(src, dst, cfg)
        model = onnx.load(str(dst))
        edit(model)  # type: ignore[operator]
        onnx.save(model, str(dst))

    monkeypatch.setattr(onnx_simplify, "simplify_file", tampered)


def test_simplify_drops_nodes_keeps_dims_and_matches(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                     tmp_path: Path) -> None:
    result = _run(tiny_ctx, tiny_onnx, tmp_path / "sim")
    path = tmp_path / "sim" / result.file
    before, after = onnx.load(str(tiny_onnx.path)), onnx.load(str(path))
    assert len(after.graph.node) < len(before.graph.node)
    assert result.stats["nodes_before"] == len(before.graph.node)
    assert result.stats["nodes_after"] == len(after.graph.node)
    assert sum(result.stats["op_histogram"].values()) <= len(after.graph.node)
    dims = graph_dims(after)
    for name in [*tiny_ctx.io.input_names, *tiny_ctx.io.output_names]:
        assert dims[name][:2] == ["batch", "sequence"]
    assert result.meta["precision"] == "fp32"

    inputs = tiny_ctx.sample_inputs(3, 77)
    got = run_onnx(path, inputs)["last_hidden_state"]
    want = run_onnx(tiny_onnx.path, inputs)["last_hidden_state"]
    assert got.shape == (3, 77, 32)
    assert max_abs_diff(got, want, inputs["attention_mask"]) <= 1e-4


def test_numeric_check_catches_a_wrong_simplification(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def perturb(model: onnx.ModelProto) -> None:
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(init).copy()  # the word embeddings
        values += np.random.default_rng(0).normal(0.0, 0.1, values.shape).astype(values.dtype)
        init.CopyFrom(numpy_helper.from_array(values, init.name))

    _rewrite_after_simplify(monkeypatch, perturb)
    with pytest.raises(ValueError, match=r"simplified model at shape .* differs by"):
        _run(tiny_ctx, tiny_onnx, tmp_path / "sim")


def test_fixed_dims_fail_the_numeric_check_at_another_shape(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fix_sequence(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = tiny_ctx.io.export_seq

    _rewrite_after_simplify(monkeypatch, fix_sequence)
    with pytest.raises(RuntimeError, match=r"fails in onnxruntime at shape 3 x .* dimension was probably baked in"):
        _run(tiny_ctx, tiny_onnx, tmp_path / "sim")


def test_external_data_parent_stays_external(tiny_ctx: PassContext, tiny_onnx: Artifact, tmp_path: Path) -> None:
    folder = tmp_path / "external"
    folder.mkdir()
    save_model(onnx.load(str(tiny_onnx.path)), folder / "model.onnx", external=True)
    parent = dataclasses.replace(tiny_onnx, path=folder / "model.onnx")
    result = _run(tiny_ctx, parent, tmp_path / "sim")
    assert result.stats["external_data"] is True
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == ["model.onnx", "model.onnx.data"]
    inputs = tiny_ctx.sample_inputs(3, 77)
    got = run_onnx(tmp_path / "sim" / "model.onnx", inputs)["last_hidden_state"]
    want = run_onnx(tiny_onnx.path, inputs)["last_hidden_state"]
    assert max_abs_diff(got, want) <= 1e-4
