"""Error localisation on a hand-built graph: the node whose weight was changed is where the error starts and
ranks first, nodes that only carry the error add none, padded positions are not compared, and the error
measures of one tensor (masks, layouts, infinities)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.repair.localize import (
    Localization,
    NodeError,
    added_db,
    float_tensors,
    localize,
    rank_nodes,
    run_exposed,
    tensor_error,
    token_rows,
)

BATCH, SEQ, HIDDEN = 2, 5, 8
RNG = np.random.default_rng(0)
W1 = (RNG.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
W2 = (RNG.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
SCALE = np.full(HIDDEN, 0.5, dtype=np.float32)
ORDER = ["proj", "act", "out_proj", "res", "scale", "shape", "reshape"]


def _graph_file(path: Path, w2: np.ndarray = W2, padding_noise: bool = False) -> Path:
    """x -> MatMul(W1) 'proj' -> Relu 'act' -> MatMul(W2) 'out_proj' -> Add x 'res' -> Mul 'scale' -> Reshape
    'reshape' -> y, reshaped to Shape(d) 'shape' (an int64 tensor inside the graph). With ``padding_noise``,
    out_proj's output gets 1.0 added on the positions attention_mask pads (under the same tensor name, by an
    extra node)."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="proj"),
             helper.make_node("Relu", ["a"], ["b"], name="act")]
    weights = {"w1": W1, "w2": w2, "scale_w": SCALE}
    if padding_noise:
        noise = np.zeros((BATCH, SEQ, HIDDEN), dtype=np.float32)
        noise[1, 3:] = 1.0
        weights["noise"] = noise
        nodes += [helper.make_node("MatMul", ["b", "w2"], ["c_raw"], name="out_proj"),
                  helper.make_node("Add", ["c_raw", "noise"], ["c"], name="padding_noise")]
    else:
        nodes.append(helper.make_node("MatMul", ["b", "w2"], ["c"], name="out_proj"))
    nodes += [helper.make_node("Add", ["c", "x"], ["d"], name="res"),
              helper.make_node("Mul", ["d", "scale_w"], ["e"], name="scale"),
              helper.make_node("Shape", ["d"], ["d_shape"], name="shape"),
              helper.make_node("Reshape", ["e", "d_shape"], ["y"], name="reshape")]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _inputs(padded: bool = True) -> dict[str, np.ndarray]:
    mask = np.ones((BATCH, SEQ), dtype=np.int64)
    if padded:
        mask[1, 3:] = 0
    x = np.random.default_rng(1).standard_normal((BATCH, SEQ, HIDDEN)).astype(np.float32)
    return {"x": x, "attention_mask": mask}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the reduced graph, whose out_proj weight is 20% off, the parent)."""
    folder = tmp_path_factory.mktemp("localize")
    noisy = (W2 * (1 + 0.2 * np.random.default_rng(2).standard_normal(W2.shape))).astype(np.float32)
    return _graph_file(folder / "reduced.onnx", noisy), _graph_file(folder / "parent.onnx")


def test_the_node_that_adds_the_error_is_where_it_starts_and_ranks_first(pair: tuple[Path, Path]) -> None:
    reduced, parent = pair
    result = localize(reduced, parent, _inputs())
    by_node = {n.node: n for n in result.worst}
    assert set(by_node) == set(ORDER) - {"shape"}  # the int64 shape is not a float tensor
    assert result.compared == 6
    assert result.first is not None and result.first.node == "out_proj" and result.first.op_type == "MatMul"
    assert result.first.tensor == "c" and result.first.order == 2 and result.first.cos_min < 0.999
    assert result.worst[0].node == "out_proj"
    # its inputs are exact (counted as 200 dB): all of its output's SQNR is lost across it
    out_proj = by_node["out_proj"]
    assert 5 < out_proj.sqnr_db < 40 and out_proj.added_db == pytest.approx(200 - out_proj.sqnr_db)
    for upstream in ("proj", "act"):  # before the change: exact, nothing added
        assert by_node[upstream].cos_min == pytest.approx(1.0) and by_node[upstream].sqnr_db == math.inf
        assert by_node[upstream].added_db == 0.0
    for downstream in ("res", "scale", "reshape"):  # after it: they carry the error, adding (almost) none
        assert by_node[downstream].cos_min < 0.999 and by_node[downstream].added_db < 1.0
    assert sorted(n.order for n in result.worst) == [0, 1, 2, 3, 4, 6]  # the index in the parent's node list


def test_rank_nodes_keeps_only_the_candidates_most_harmful_first(pair: tuple[Path, Path]) -> None:
    reduced, parent = pair
    ranked = rank_nodes(reduced, parent, _inputs(), {"res", "out_proj", "act", "no such node"})
    assert [n.node for n in ranked][:1] == ["out_proj"]
    assert {n.node for n in ranked} == {"res", "out_proj", "act"}
    assert [n.added_db for n in ranked] == sorted((n.added_db for n in ranked), reverse=True)


def test_a_lenient_threshold_finds_no_start_and_top_limits_the_worst(pair: tuple[Path, Path]) -> None:
    reduced, parent = pair
    result = localize(reduced, parent, _inputs(), cos_threshold=0.5, top=2)
    assert result.first is None
    assert [n.node for n in result.worst][0] == "out_proj" and len(result.worst) == 2


def test_an_unchanged_model_has_no_error_anywhere(pair: tuple[Path, Path]) -> None:
    _, parent = pair
    result = localize(parent, parent, _inputs())
    assert result.first is None and result.compared == 6
    assert all(n.sqnr_db == math.inf and n.added_db == 0.0 and n.cos_min > 1 - 1e-12 for n in result.worst)


def test_an_error_only_on_padded_positions_is_not_an_error(tmp_path: Path) -> None:
    parent = _graph_file(tmp_path / "parent.onnx")
    reduced = _graph_file(tmp_path / "reduced.onnx", padding_noise=True)
    masked = localize(reduced, parent, _inputs(padded=True))
    assert masked.first is None and all(n.cos_min > 0.999999 for n in masked.worst)
    # with every position real, the same difference is found, at the tensor out_proj makes in the parent
    unmasked = localize(reduced, parent, _inputs(padded=False))
    assert unmasked.first is not None and unmasked.first.node == "out_proj" and unmasked.first.tensor == "c"


def test_run_exposed_adds_the_named_float_tensors_as_outputs(pair: tuple[Path, Path]) -> None:
    _, parent = pair
    out = run_exposed(parent, _inputs(), {"a", "b", "d_shape", "not a tensor"})
    assert set(out) == {"y", "a", "b"}  # the graph's outputs, and the named float tensors
    x = _inputs()["x"].astype(np.float64)
    np.testing.assert_allclose(out["a"], x @ W1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["b"], np.maximum(x @ W1, 0), rtol=1e-5, atol=1e-5)
    assert all(value.dtype == np.float32 for value in out.values())


def test_float_tensors_types_every_float_node_output_and_leaves_out_the_rest(pair: tuple[Path, Path]) -> None:
    _, parent = pair
    assert float_tensors(onnx.load(str(parent))) == {name: TensorProto.FLOAT for name in ("a", "b", "c", "d", "e", "y")}


def test_token_rows_follows_the_layouts_inside_a_transformer() -> None:
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    value = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert token_rows(value, mask).tolist() == [value[0, 0].tolist(), value[0, 1].tolist(), value[1, 0].tolist()]
    flat = value.reshape(6, 4)  # tokens flattened into one axis, as around a Gemm
    assert token_rows(flat, mask).tolist() == token_rows(value, mask).tolist()
    heads = np.moveaxis(value.reshape(2, 3, 2, 2), 2, 1)  # batch x heads x seq x size
    assert token_rows(heads, mask).tolist() == token_rows(value, mask).tolist()
    assert token_rows(value, None).shape == (2, 12)


def test_tensor_error_ignores_identical_infinities_and_a_shape_change_is_the_worst() -> None:
    ref = np.array([[[1.0, -np.inf, 2.0]]], dtype=np.float32)
    cos, sqnr = tensor_error(ref, ref.copy(), None)
    assert cos == pytest.approx(1.0) and sqnr == math.inf
    off = ref.copy()
    off[0, 0, 1] = 0.0  # a finite score where the reference has an infinity (the other way round below)
    assert tensor_error(off, ref, None) == (-1.0, -math.inf)
    assert tensor_error(ref, ref[..., :2], None) == (-1.0, -math.inf)
    mask = np.array([[1, 0]])
    a = np.ones((1, 2, 4))
    b = a.copy()
    b[0, 1] = -1.0  # only the padded token differs
    cos, sqnr = tensor_error(a, b, mask)
    assert cos == pytest.approx(1.0) and sqnr == math.inf
    assert tensor_error(a, b, None)[1] < 10


@pytest.mark.parametrize(("before", "after", "added"), [
    (math.inf, 30.0, 170.0),  # exact inputs count as 200 dB
    (250.0, 30.0, 170.0),
    (40.0, 30.0, 10.0),
    (30.0, 40.0, -10.0),  # a node can improve the SQNR (a residual add)
    (30.0, math.inf, 0.0),  # an exact output adds nothing
    (30.0, -math.inf, math.inf),  # a finite input turned into NaN or a shape change
    (-math.inf, -math.inf, 0.0),  # already broken before the node
])
def test_added_db(before: float, after: float, added: float) -> None:
    assert added_db(before, after) == added


def test_the_reports_are_plain_json_with_infinities_as_text() -> None:
    node = NodeError("n", "MatMul", "t", 3, 0.5, math.inf, -math.inf)
    assert node.to_json() == {"node": "n", "op_type": "MatMul", "tensor": "t", "order": 3, "cos_min": 0.5,
                              "sqnr_db": "inf", "added_db": "-inf"}
    doc = Localization(first=node, worst=[node], compared=7).to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == {"first": node.to_json(), "compared": 7,
                                                            "worst": [node.to_json()]}
    assert Localization(first=None).to_json() == {"first": None, "compared": 0, "worst": []}


def test_an_infinity_the_output_lost_is_an_error_not_nan() -> None:
    ref = np.array([[[1.0, -np.inf, 2.0]]], dtype=np.float32)
    off = ref.copy()
    off[0, 0, 1] = 0.0
    cos, sqnr = tensor_error(ref, off, None)
    assert (cos, sqnr) == (-1.0, -math.inf)
