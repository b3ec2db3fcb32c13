"""Tests of the onnx_export pass: both exporters, dynamic axes, names, opset checks, external data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest
from pydantic import ValidationError

from passes._support.onnx_io import max_abs_diff
from passes.export.onnx_export import OnnxExportConfig, OnnxExportPass, use_external
from pipeline.core.artifact import Artifact
from pipeline.engine.pass_api import PassContext, PassOutput
from pipeline.engine.postconditions import graph_dims
from pipeline.runtime.runner import run_module, run_onnx


def _run(ctx: PassContext, parent: Artifact, out: Path, **config: object) -> PassOutput:
    out.mkdir()
    return OnnxExportPass(OnnxExportConfig(**config)).run(parent, ctx, out)


def _assert_matches_eager(path: Path, ctx: PassContext, batch: int = 3, seq: int = 77) -> None:
    inputs = ctx.sample_inputs(batch, seq)
    want = run_module(ctx.model.load().module, inputs, ctx.io.input_names, ctx.io.output_names)["last_hidden_state"]
    got = run_onnx(path, inputs)["last_hidden_state"]
    assert got.shape == (batch, seq, 32)
    assert max_abs_diff(got, want, inputs["attention_mask"]) <= 1e-4


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_is_dynamic_named_and_matches_eager(exporter: str, tiny_ctx: PassContext, eager_artifact: Artifact,
                                                   tmp_path: Path) -> None:
    result = _run(tiny_ctx, eager_artifact, tmp_path / "onnx", exporter=exporter)
    path = tmp_path / "onnx" / result.file
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == tiny_ctx.io.input_names
    assert [o.name for o in model.graph.output] == tiny_ctx.io.output_names
    dims = graph_dims(model)
    for name in tiny_ctx.io.input_names:
        assert all(isinstance(d, str) and d for d in dims[name]), dims[name]
    assert result.stats["exporter"] == exporter and result.stats["opset"] == 17
    assert result.stats["nodes"] == len(model.graph.node) > 0
    assert result.meta["precision"] == "fp32"
    assert not (tmp_path / "onnx" / ".export").exists()
    _assert_matches_eager(path, tiny_ctx)


def test_external_data_always_writes_a_data_file(tiny_ctx: PassContext, eager_artifact: Artifact,
                                                 tmp_path: Path) -> None:
    result = _run(tiny_ctx, eager_artifact, tmp_path / "onnx", external_data="always")
    path = tmp_path / "onnx" / result.file
    data = path.with_name("model.onnx.data")
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert result.stats["external_data"] is True
    _assert_matches_eager(path, tiny_ctx)


def test_an_axis_left_static_is_caught(tiny_ctx: PassContext, eager_artifact: Artifact, tmp_path: Path) -> None:
    only_batch = {name: {0: "batch"} for name in tiny_ctx.io.dynamic_axes}
    ctx = dataclasses.replace(tiny_ctx, io=dataclasses.replace(tiny_ctx.io, dynamic_axes=only_batch))
    with pytest.raises(RuntimeError, match="fails in onnxruntime at shape 3 x 35"):
        _run(ctx, eager_artifact, tmp_path / "onnx")


def test_opset_is_validated() -> None:
    for bad in ({"opset": 5}, {"opset": 30}, {"opset": 21}, {"exporter": "onnxscript"}, {"opset": "17x"},
                {"external_data": "sometimes"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            OnnxExportConfig(**bad)
    assert OnnxExportConfig(exporter="dynamo", opset=21).opset == 21


def test_external_data_choice() -> None:
    assert use_external("auto", 10_000) is False
    assert use_external("auto", 2_500_000_000) is True
    assert use_external("always", 10) is True
    with pytest.raises(ValueError, match="need external data"):
        use_external("never", 2_500_000_000)
