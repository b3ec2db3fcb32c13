"""int8 weights for OpenVINO's dynamic quantization: NNCF compresses the MatMuls asked for (and only those),
the compressed MatMuls are found by walking up to their int8 constants (a statically quantized one is not
counted), and the group size travels in the IR's runtime options to compile_model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.errors import RecipeError

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

import openvino.opset13 as ops  # noqa: E402

from passes._support.ov_weights import (  # noqa: E402
    GROUP_OPTION,
    compress_int8,
    compressed_matmuls,
    decline_telemetry,
    require_nncf,
    runtime_options,
    set_group_size,
)

HIDDEN = 64
W1 = np.random.default_rng(0).standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
W2 = np.random.default_rng(1).standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
X = np.random.default_rng(2).standard_normal((2, 3, HIDDEN)).astype(np.float32)


def _two_matmuls() -> Any:
    """x -> MatMul 'mm1' -> Relu -> MatMul 'mm2', float32 weights."""
    x = ops.parameter([2, 3, HIDDEN], np.float32, name="x")
    first = ops.matmul(x, ops.constant(W1), False, False)
    first.set_friendly_name("mm1")
    second = ops.matmul(ops.relu(first), ops.constant(W2), False, False)
    second.set_friendly_name("mm2")
    return ov.Model([second], [x], "two_matmuls")


def _run(model: Any) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled({"x": X})[compiled.outputs[0]])


def _weight_types(model: Any) -> dict[str, str]:
    """The element type of the constant at the start of each MatMul's weight input chain."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            node = op.input(1).get_source_output().get_node()
            while node.get_type_name() != "Constant":
                node = node.input(0).get_source_output().get_node()
            found[op.get_friendly_name()] = node.get_element_type().get_type_name()
    return found


def test_every_matmul_gets_int8_weights_and_the_outputs_stay_close() -> None:
    reference = _run(_two_matmuls())
    model = compress_int8(_two_matmuls())
    assert compressed_matmuls(model) == ["mm1", "mm2"]
    assert set(_weight_types(model).values()) <= {"u8", "i8"}
    out = _run(model)
    assert out.shape == reference.shape
    error = np.linalg.norm(out - reference) / np.linalg.norm(reference)
    assert 0 < error < 0.02  # int8 per-channel: changed, but by little


def test_only_the_named_matmuls_are_compressed() -> None:
    model = compress_int8(_two_matmuls(), ["mm2"])
    assert compressed_matmuls(model) == ["mm2"]
    assert _weight_types(model)["mm1"] == "f32"
    untouched = compress_int8(_two_matmuls(), [])
    assert compressed_matmuls(untouched) == [] and set(_weight_types(untouched).values()) == {"f32"}


def _int8_weight(path: list[str]) -> Any:
    """An int8 constant (HIDDEN x HIDDEN) brought to float32 through the ops in ``path``."""
    node = ops.constant(np.ones((HIDDEN, HIDDEN), dtype=np.int8))
    for kind in path:
        if kind == "Convert":
            node = ops.convert(node, "f32")
        elif kind == "Multiply":
            node = ops.multiply(node, ops.constant(np.float32(0.5)))
        elif kind == "Subtract":
            node = ops.subtract(node, ops.constant(np.float32(1.0)))
        elif kind == "Reshape":
            node = ops.reshape(node, ops.constant(np.array([HIDDEN, HIDDEN], dtype=np.int64)), False)
        elif kind == "Transpose":
            node = ops.transpose(node, ops.constant(np.array([1, 0], dtype=np.int64)))
    return node


def _matmul(x: Any, weight: Any, name: str) -> Any:
    node = ops.matmul(x, weight, False, False)
    node.set_friendly_name(name)
    return node


def test_compressed_matmuls_walks_up_at_most_four_nodes_of_the_dequantization_ops() -> None:
    x = ops.parameter([2, 3, HIDDEN], np.float32, name="x")
    quantized = ops.fake_quantize(x, ops.constant(np.float32(-4)), ops.constant(np.float32(4)),
                                  ops.constant(np.float32(-4)), ops.constant(np.float32(4)), 256)
    outputs = [
        _matmul(x, _int8_weight(["Convert", "Subtract", "Multiply", "Reshape"]), "four_up"),
        _matmul(x, _int8_weight(["Convert", "Subtract", "Multiply", "Reshape", "Reshape"]), "five_up"),
        _matmul(x, _int8_weight(["Convert", "Transpose"]), "through_a_transpose"),
        _matmul(quantized, _int8_weight(["Convert", "Multiply"]), "static_int8"),  # FakeQuantize in front
        _matmul(x, ops.constant(W1), "float"),
        _matmul(_int8_weight(["Convert", "Multiply"]), ops.constant(W2), "weight_first"),
    ]
    model = ov.Model(outputs, [x], "walk")
    assert sorted(compressed_matmuls(model)) == ["four_up", "weight_first"]  # an int8 operand on either side


def test_the_group_size_is_kept_in_the_ir_and_compile_model_applies_it(tmp_path: Path) -> None:
    model = _two_matmuls()
    assert runtime_options(model) == {}
    set_group_size(model, 64)
    assert runtime_options(model) == {GROUP_OPTION: "64"}
    path = tmp_path / "model.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    core = ov.Core()
    read = core.read_model(str(path))
    assert runtime_options(read) == {GROUP_OPTION: "64"}
    assert int(core.compile_model(read, "CPU").get_property(GROUP_OPTION)) == 64  # no option passed: from the IR
    set_group_size(read, 32)
    assert runtime_options(read) == {GROUP_OPTION: "32"}


def test_require_nncf_names_the_pass_when_nncf_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    require_nncf("ov_weight_int8")  # installed: nothing to say
    monkeypatch.setitem(sys.modules, "nncf", None)  # an import of it now fails
    with pytest.raises(RecipeError, match=r"^passes: ov_weight_int8 needs NNCF, which is not installed here"):
        require_nncf("ov_weight_int8")


def test_declining_telemetry_withdraws_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    from openvino_telemetry import Telemetry

    telemetry = Telemetry()
    monkeypatch.setattr(telemetry, "consent", True)
    decline_telemetry()
    assert Telemetry() is telemetry and telemetry.consent is False
