"""fp16 on the tiny BERT: half the bytes, float32 at the edges, close to its parent, blocks honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from pydantic import ValidationError

from passes.precision.fp16 import Fp16Config, Fp16Pass, tensor_types
from pipeline.core.artifact import Artifact
from pipeline.engine.pass_api import PassContext
from pipeline.model.inputs import random_tokens
from pipeline.runtime.runner import run_onnx
from pipeline.verify.metrics import compare

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _convert(tiny_onnx: Artifact, ctx: PassContext, out: Path, **config: object):
    out.mkdir()
    return Fp16Pass(Fp16Config(**config)).run(tiny_onnx, ctx, out)


def test_halves_size_and_matches_parent(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _convert(tiny_onnx, tiny_ctx, tmp_path / "fp16")
    path = tmp_path / "fp16" / output.file
    assert output.meta["precision"] == "fp16"
    assert 0.4 < path.stat().st_size / tiny_onnx.path.stat().st_size < 0.6
    assert output.stats["fp16_nodes"] > output.stats["fp32_nodes"]
    assert output.stats["cast_nodes"] > 0

    model = onnx.load(str(path))
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)

    inputs = random_tokens(NAMES, 3, 77, 30522)
    keep = inputs["attention_mask"].astype(bool)
    want, got = run_onnx(tiny_onnx.path, inputs)["last_hidden_state"], run_onnx(path, inputs)["last_hidden_state"]
    assert got.dtype == np.float32 and got.shape == (3, 77, 32)
    assert compare(want, got, keep)["cos_min"] > 0.999


def test_node_block_list_keeps_node_in_float32(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    source = onnx.load(str(tiny_onnx.path))
    target = next(n for n in source.graph.node if n.op_type == "MatMul" and "attention" in n.name)
    output = _convert(tiny_onnx, tiny_ctx, tmp_path / "fp16", node_block_list=[target.name])
    model = onnx.load(str(tmp_path / "fp16" / output.file))
    types = tensor_types(model)
    node = next(n for n in model.graph.node if n.name == target.name)
    assert {types[name] for name in [*node.input, *node.output]} == {TensorProto.FLOAT}
    others = [n for n in model.graph.node if n.op_type == "MatMul" and n.name != target.name]
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in others)


def test_unknown_block_node_fails(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no node named"):
        _convert(tiny_onnx, tiny_ctx, tmp_path / "fp16", node_block_list=["no/such/node"])


@pytest.mark.parametrize("bad", [{"keep_io_type": True}, {"max_finite_val": 1e6}, {"min_positive_val": 0.0}])
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Fp16Config(**bad)
