"""Which nodes a precision pass touches: names and globs (a typo is an error), the nodes that read a weight,
and a Gemm excluded under the name onnxruntime's quantizer gives its MatMul too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes._support.node_selection import exclusion_names, gemm_names, select_nodes, weight_nodes

NAMES = ["/layer.0/attention/q/MatMul", "/layer.0/output/dense/MatMul", "/layer.1/output/dense/MatMul",
         "/layer.10/output/dense/MatMul", "/pooler/Gemm", "/act/Relu", "/mix/MatMul"]


def _model() -> onnx.ModelProto:
    """A chain of the nodes in NAMES: every MatMul and the Gemm read a weight, but /mix/MatMul multiplies two
    activations."""
    weights: dict[str, np.ndarray] = {f"w{i}": np.ones((4, 4), dtype=np.float32) for i in range(5)}
    weights["bias"] = np.zeros(4, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["t0"], name=NAMES[0]),
             helper.make_node("MatMul", ["t0", "w1"], ["t1"], name=NAMES[1]),
             helper.make_node("MatMul", ["w2", "t1"], ["t2"], name=NAMES[2]),  # the weight may come first
             helper.make_node("MatMul", ["t2", "w3"], ["t3"], name=NAMES[3]),
             helper.make_node("Gemm", ["t3", "w4", "bias"], ["t4"], name=NAMES[4]),
             helper.make_node("Relu", ["t4"], ["t5"], name=NAMES[5]),
             helper.make_node("MatMul", ["t5", "t4"], ["y"], name=NAMES[6])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [numpy_helper.from_array(value, name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_exact_names_and_globs_select_in_pattern_order_without_repeats() -> None:
    model = _model()
    assert select_nodes(model, ["/pooler/Gemm"], "block") == ["/pooler/Gemm"]
    # a glob matches in graph order; a name matched twice is listed once, where it was first selected
    chosen = select_nodes(model, ["/pooler/Gemm", "*output/dense/MatMul", "/layer.1/output/dense/MatMul"], "block")
    assert chosen == ["/pooler/Gemm", "/layer.0/output/dense/MatMul", "/layer.1/output/dense/MatMul",
                      "/layer.10/output/dense/MatMul"]
    assert select_nodes(model, ["*layer.*[0-9]/output/dense/MatMul"], "o") == NAMES[1:4]
    assert select_nodes(model, ["/layer.?/*"], "o") == NAMES[:3]  # ? is one character: not layer.10
    assert select_nodes(model, [], "o") == []


def test_an_exact_name_wins_over_its_reading_as_a_glob() -> None:
    model = _model()
    model.graph.node[5].name = "/act/[Relu]"  # brackets: as a glob, a character class that matches no name
    assert select_nodes(model, ["/act/[Relu]"], "o") == ["/act/[Relu]"]


def test_a_pattern_that_matches_nothing_is_an_error_naming_the_option_and_the_pattern() -> None:
    with pytest.raises(ValueError, match=r"^repair\.keep: the model has no node named '\*attention/k/\*'$"):
        select_nodes(_model(), ["*/MatMul", "*attention/k/*"], "repair.keep")
    with pytest.raises(ValueError, match="no node named '/layer.0/attention/q/matmul'"):  # names are case-sensitive
        select_nodes(_model(), ["/layer.0/attention/q/matmul"], "o")


def test_weight_nodes_are_the_nodes_of_the_types_asked_that_read_an_initializer() -> None:
    model = _model()
    assert weight_nodes(model, {"MatMul"}) == {name: "MatMul" for name in NAMES[:4]}  # not the activation product
    assert weight_nodes(model, {"MatMul", "Gemm", "Relu"}) == {**{name: "MatMul" for name in NAMES[:4]},
                                                               "/pooler/Gemm": "Gemm"}
    assert weight_nodes(model, set()) == {}


def test_a_gemm_is_excluded_under_its_own_name_and_its_matmuls() -> None:
    model = _model()
    gemms = gemm_names(model)
    assert gemms == frozenset({"/pooler/Gemm"})
    assert exclusion_names(gemms, ["/layer.0/output/dense/MatMul", "/pooler/Gemm", "/act/Relu"]) == [
        "/layer.0/output/dense/MatMul", "/pooler/Gemm", "/pooler/Gemm_MatMul", "/act/Relu"]
    assert exclusion_names(frozenset(), ["/pooler/Gemm"]) == ["/pooler/Gemm"]
    assert exclusion_names(gemms, []) == []
