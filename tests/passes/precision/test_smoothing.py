"""The rewrite before dynamic int8: exact in float, smoothing after normalizations, splitting elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from passes._support.node_selection import weight_nodes
from passes.precision import smoothing
from pipeline.model.inputs import random_tokens
from pipeline.runtime.runner import run_onnx

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture
def plans(tiny_onnx, tiny_ctx) -> list[smoothing.NodePlan]:
    model = onnx.load(str(tiny_onnx.path))
    nodes = set(weight_nodes(model, {"MatMul"}))
    batches = [random_tokens(NAMES, 2, 12, 1000, seed=i) for i in range(2)]
    return smoothing.plan(tiny_onnx.path, batches, nodes, alpha=0.7, split=2)


def test_smoothing_follows_normalizations_and_splitting_the_rest(tiny_onnx, plans) -> None:
    model = onnx.load(str(tiny_onnx.path))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    nodes = {node.name: node for node in model.graph.node}
    assert any(p.smoothed for p in plans) and any(p.split for p in plans)
    for p in plans:
        fed_by = producers.get(nodes[p.node].input[0])
        if fed_by in smoothing.SMOOTHED_AFTER:
            assert p.smoothed and not p.split, p.node
        else:
            assert not p.smoothed and len(p.split) == 2 and nodes[p.node].op_type == "MatMul", (p.node, fed_by)


def test_rewrite_computes_what_the_model_did(tiny_onnx, plans, tmp_path: Path) -> None:
    rewritten = smoothing.rewrite(onnx.load(str(tiny_onnx.path)), plans)
    onnx.checker.check_model(rewritten)
    path = tmp_path / "rewritten.onnx"
    onnx.save_model(rewritten, str(path))
    names = {node.name for node in rewritten.graph.node}
    assert all(smoothing.float_part_name(p.node) in names for p in plans if p.split)
    inputs = random_tokens(NAMES, 3, 21, 1000, seed=9)  # another shape than the calibration's
    want, got = run_onnx(tiny_onnx.path, inputs), run_onnx(path, inputs)
    assert np.abs(want["last_hidden_state"] - got["last_hidden_state"]).max() < 1e-4


def test_split_channels_are_the_widest(tiny_onnx, plans) -> None:
    split = next(p for p in plans if p.split)
    model = onnx.load(str(tiny_onnx.path))
    node = next(n for n in model.graph.node if n.name == split.node)
    batches = [random_tokens(NAMES, 2, 12, 1000, seed=i) for i in range(2)]
    ranges = smoothing.input_ranges(tiny_onnx.path, batches, {node.name: node})[node.name]
    assert set(split.split) == set(np.argsort(ranges)[-2:].tolist())
