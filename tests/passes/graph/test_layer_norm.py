"""SkipLayerNormalization written back as Sum + LayerNormalization: same outputs in onnxruntime, the epsilon and
the optional inputs carried over, the residual sum kept under its name when read, and nodes whose statistics
are read (or graphs below opset 17) left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.graph.layer_norm import DEFAULT_EPSILON, split_skip_layer_norms, standard_opset
from pipeline.runtime.runner import run_onnx

HIDDEN = 8
RNG = np.random.default_rng(0)
WEIGHTS = {name: RNG.standard_normal(HIDDEN).astype(np.float32) for name in ("gamma", "beta", "bias")}


def _model(nodes: list[onnx.NodeProto], outputs: list[str], opset: int = 17,
           domain: str = "") -> onnx.ModelProto:
    """x and skip (2 x 3 x HIDDEN) in, gamma, beta and bias as weights, ``outputs`` out."""
    shape = [2, 3, HIDDEN]
    graph = helper.make_graph(
        nodes, "skip_ln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in outputs],
        [numpy_helper.from_array(value, name) for name, value in WEIGHTS.items()])
    opsets = [helper.make_opsetid(domain, opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _skip_ln(name: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
    return helper.make_node("SkipLayerNormalization", inputs, outputs, name=name, domain="com.microsoft", **attrs)


def _run(model: onnx.ModelProto, tmp_path: Path, tag: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    path = tmp_path / f"{tag}.onnx"
    onnx.save(model, str(path))
    return run_onnx(path, inputs)


def _inputs(scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {n: (scale * rng.standard_normal((2, 3, HIDDEN))).astype(np.float32) for n in ("x", "skip")}


def _same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, tmp_path: Path, inputs: dict[str, np.ndarray],
                  atol: float = 1e-5) -> None:
    want = _run(before, tmp_path, "before", inputs)
    got = _run(after, tmp_path, "after", inputs)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)


def test_a_skip_layer_norm_becomes_sum_and_layer_norm_with_the_same_outputs(tmp_path: Path) -> None:
    nodes = [_skip_ln("sln", ["x", "skip", "gamma", "beta", "bias"], ["y"], epsilon=1e-5),
             helper.make_node("Relu", ["y"], ["out"], name="after")]
    before = _model(nodes, ["out"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert split_skip_layer_norms(after) == 1
    assert [(n.op_type, n.domain, n.name) for n in after.graph.node] == [
        ("Sum", "", "sln/Sum"), ("LayerNormalization", "", "sln/LayerNormalization"), ("Relu", "", "after")]
    total, norm, _ = after.graph.node
    assert list(total.input) == ["x", "skip", "bias"] and list(total.output) == ["sln/residual_sum"]
    assert list(norm.input) == ["sln/residual_sum", "gamma", "beta"] and list(norm.output) == ["y"]
    attrs = {a.name: helper.get_attribute_value(a) for a in norm.attribute}
    assert attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(1e-5)
    onnx.checker.check_model(after, full_check=True)
    _same_outputs(before, after, tmp_path, _inputs())


def test_without_bias_and_beta_the_sum_has_two_addends_and_the_default_epsilon_is_carried(tmp_path: Path) -> None:
    before = _model([_skip_ln("sln", ["x", "skip", "gamma"], ["y"])], ["y"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert split_skip_layer_norms(after) == 1
    total, norm = after.graph.node
    assert list(total.input) == ["x", "skip"] and list(norm.input) == ["sln/residual_sum", "gamma"]
    epsilon = next(a.f for a in norm.attribute if a.name == "epsilon")
    assert epsilon == pytest.approx(DEFAULT_EPSILON, rel=1e-6)  # not LayerNormalization's own 1e-5
    # inputs whose variance is near 1e-5, where the two epsilons give visibly different outputs
    _same_outputs(before, after, tmp_path, _inputs(scale=3e-3), atol=1e-3)


def test_a_read_residual_sum_keeps_its_name_and_is_the_sums_output(tmp_path: Path) -> None:
    nodes = [_skip_ln("sln", ["x", "skip", "gamma", "beta", "bias"], ["y", "", "", "residual"]),
             helper.make_node("Add", ["y", "residual"], ["out"], name="next")]
    before = _model(nodes, ["out", "residual"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert split_skip_layer_norms(after) == 1
    assert list(after.graph.node[0].output) == ["residual"]
    assert list(after.graph.node[1].input)[0] == "residual"
    onnx.checker.check_model(after, full_check=True)
    _same_outputs(before, after, tmp_path, _inputs())


def test_an_unread_residual_sum_output_is_not_kept_under_its_name() -> None:
    model = _model([_skip_ln("sln", ["x", "skip", "gamma"], ["y", "", "", "unread"])], ["y"])
    assert split_skip_layer_norms(model) == 1
    assert list(model.graph.node[0].output) == ["sln/residual_sum"]


@pytest.mark.parametrize("read", ["mean", "inv_std"])
def test_a_node_whose_mean_or_inverse_deviation_is_read_is_left_fused(read: str) -> None:
    outputs = ["y", "mean", "inv_std"]
    nodes = [_skip_ln("sln", ["x", "skip", "gamma"], outputs), helper.make_node("Identity", [read], ["stat"])]
    model = _model(nodes, ["y", "stat"])
    original = model.SerializeToString()
    assert split_skip_layer_norms(model) == 0
    assert model.SerializeToString() == original


def test_only_the_nodes_that_can_be_split_are(tmp_path: Path) -> None:
    nodes = [_skip_ln("first", ["x", "skip", "gamma", "beta"], ["h"]),
             _skip_ln("kept", ["h", "skip", "gamma"], ["h2", "mean"]),
             helper.make_node("Identity", ["mean"], ["m"], name="reads_mean"),
             _skip_ln("last", ["h2", "x", "gamma", "beta", "bias"], ["y"], epsilon=1e-6)]
    before = _model(nodes, ["y", "m"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert split_skip_layer_norms(after) == 2
    assert [n.name for n in after.graph.node] == ["first/Sum", "first/LayerNormalization", "kept", "reads_mean",
                                                  "last/Sum", "last/LayerNormalization"]
    _same_outputs(before, after, tmp_path, _inputs())


@pytest.mark.parametrize(("opset", "domain"), [(16, ""), (16, "ai.onnx")])
def test_nothing_changes_below_opset_17(opset: int, domain: str) -> None:
    model = _model([_skip_ln("sln", ["x", "skip", "gamma"], ["y"])], ["y"], opset=opset, domain=domain)
    assert standard_opset(model) == 16
    assert split_skip_layer_norms(model) == 0
    assert [n.op_type for n in model.graph.node] == ["SkipLayerNormalization"]


def test_standard_opset_reads_the_default_domain_only() -> None:
    model = _model([], [], opset=18, domain="ai.onnx")
    assert standard_opset(model) == 18
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("com.microsoft", 1)])
    assert standard_opset(model) == 0


def test_a_same_named_node_of_another_domain_is_not_touched() -> None:
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma"], ["y"], name="custom", domain="my.ops")
    model = _model([node], ["y"])
    assert split_skip_layer_norms(model) == 0 and model.graph.node[0].domain == "my.ops"


def test_a_node_with_a_bias_and_no_beta_gets_a_named_sum(tmp_path: Path) -> None:
    before = _model([_skip_ln("no_beta", ["x", "skip", "gamma", "", "bias"], ["y"])], ["y"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert split_skip_layer_norms(after) == 1
    assert list(after.graph.node[0].output) == ["no_beta/residual_sum"]
    assert list(after.graph.node[1].input) == ["no_beta/residual_sum", "gamma"]
    _same_outputs(before, after, tmp_path, _inputs())


def test_two_unnamed_nodes_get_distinct_sum_outputs(tmp_path: Path) -> None:
    nodes = [_skip_ln("", ["x", "skip", "gamma"], ["h"]), _skip_ln("", ["h", "skip", "gamma"], ["y"])]
    before = _model(nodes, ["y"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert split_skip_layer_norms(after) == 2
    produced = [out for node in after.graph.node for out in node.output]
    assert len(produced) == len(set(produced))
    _same_outputs(before, after, tmp_path, _inputs())
