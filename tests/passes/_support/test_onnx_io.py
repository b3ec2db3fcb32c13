"""The helpers the passes share: ONNX files in and out (external data, the 2 GB limit), graph facts, running a
file with a message that names the shape, comparing outputs, and the shapes and reference a pass checks at."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from passes._support import onnx_io
from passes._support.onnx_io import (
    check_at_shapes,
    check_outputs_close,
    count_tracer_warnings,
    files_bytes,
    fresh_reference,
    has_external_data,
    inputs_to_check,
    load_model,
    max_abs_diff,
    max_positions,
    model_file,
    op_counts,
    op_histogram,
    opset,
    run_checked,
    save_model,
    shape_text,
    shapes_to_check,
    weight_bytes,
)
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import IOSpec

BIG = np.arange(16 * 32, dtype=np.float32).reshape(16, 32)  # 2 KiB: stored externally (threshold 1 KiB)
SMALL = np.ones(8, dtype=np.float32)  # 32 bytes: stays in the proto


def _model(seq: int | str = "seq", weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x (batch x seq x 16) -> MatMul(big) 'mm' -> Add(bias 32) 'add' -> Relu 'relu' -> y; a custom-domain node
    name in the histogram comes from an extra com.microsoft opset (no node uses it at run time)."""
    weights = weights if weights is not None else {"big": BIG, "bias": np.ones(32, dtype=np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "big"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "bias"], ["h2"], name="add"),
             helper.make_node("Relu", ["h2"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, 32])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _x(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(batch * 100 + seq).standard_normal((batch, seq, 16)).astype(np.float32)}


# -- files ---------------------------------------------------------------------------------------------------

def test_model_file_needs_a_file_and_with_fp32_an_fp32_parent(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    fp32 = Artifact(step_folder="01_onnx_export", format=Format.ONNX, key="k", path=path, meta={"precision": "fp32"})
    assert model_file(fp32, "fp16", fp32=True) == path
    eager = Artifact(step_folder="eager", format=Format.EAGER, key="k")
    with pytest.raises(ValueError, match="^eager has no model file$"):
        model_file(eager, "fp16")
    half = Artifact(step_folder="02_fp16", format=Format.ONNX, key="k", path=path, meta={"precision": "fp16"})
    assert model_file(half, "int8_dynamic") == path  # any precision unless fp32 is asked for
    with pytest.raises(ValueError, match="^int8_dynamic takes fp32 models; 02_fp16 is fp16$"):
        model_file(half, "int8_dynamic", fp32=True)


def test_save_inline_then_external_and_back(tmp_path: Path) -> None:
    model = _model()
    inline = tmp_path / "inline.onnx"
    assert save_model(model, inline, external=False) == [inline]
    assert not inline.with_name("inline.onnx.data").exists()
    assert not has_external_data(load_model(inline, with_data=False))
    assert files_bytes(inline) == inline.stat().st_size

    external = tmp_path / "ext.onnx"
    data = tmp_path / "ext.onnx.data"
    assert save_model(onnx.load(str(inline)), external, external=True) == [external, data]
    structure = load_model(external, with_data=False)
    assert has_external_data(structure)
    stored = {t.name: t.data_location for t in structure.graph.initializer}
    assert stored == {"big": TensorProto.EXTERNAL, "bias": TensorProto.DEFAULT}  # only tensors of 1 KiB and more
    assert weight_bytes(structure) == BIG.nbytes + structure.graph.initializer[1].ByteSize()
    assert files_bytes(external) == external.stat().st_size + data.stat().st_size
    assert data.stat().st_size >= BIG.nbytes
    loaded = {t.name: numpy_helper.to_array(t) for t in load_model(external).graph.initializer}
    assert np.array_equal(loaded["big"], BIG)
    assert onnx_io.run_onnx(external, _x(2, 3))["y"].shape == (2, 3, 32)


def test_saving_with_external_data_and_no_large_weight_leaves_no_stale_data_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save_model(_model(), path, external=True)
    assert path.with_name("m.onnx.data").exists()
    small = _model(weights={"big": np.ones((16, 8), dtype=np.float32), "bias": SMALL})
    assert save_model(small, path, external=True) == [path]
    assert not path.with_name("m.onnx.data").exists()  # the old weights are not left beside the new model
    assert not has_external_data(load_model(path, with_data=False))


def test_a_model_over_the_protobuf_limit_must_use_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(onnx_io, "PROTOBUF_LIMIT", BIG.nbytes)
    path = tmp_path / "big.onnx"
    with pytest.raises(ValueError, match="big.onnx: the model holds over 2 GB of weights; it needs external data"):
        save_model(_model(), path, external=False)
    assert not path.exists()
    assert save_model(_model(), path, external=True)[0] == path  # external data has no such limit


def test_weight_bytes_of_inline_tensors_counts_their_serialized_size() -> None:
    model = _model()
    assert weight_bytes(model) == sum(t.ByteSize() for t in model.graph.initializer)
    assert weight_bytes(model) >= BIG.nbytes + 32 * 4


# -- graph facts ---------------------------------------------------------------------------------------------

def test_op_counts_histogram_and_opset() -> None:
    model = _model()
    model.graph.node.append(helper.make_node("Gelu", ["y"], ["z"], name="gelu", domain="com.microsoft"))
    model.graph.node.append(helper.make_node("Relu", ["z"], ["w"], name="relu2"))
    assert op_counts(model, ("Relu", "MatMul", "Gemm")) == {"MatMul": 1, "Relu": 2}  # sorted, zeros left out
    assert list(op_counts(model, ("Relu", "MatMul"))) == ["MatMul", "Relu"]
    assert op_histogram(model) == {"Relu": 2, "MatMul": 1, "Add": 1, "com.microsoft::Gelu": 1}
    assert op_histogram(model, top=1) == {"Relu": 2}
    assert opset(model) == 17
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx", 18))
    assert opset(model) == 18
    del model.opset_import[:]
    assert opset(model) is None


# -- running and comparing -------------------------------------------------------------------------------------

def test_run_checked_names_the_shape_a_baked_in_dimension_fails_at(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    reshaped = _model()
    # a Reshape to the export shape (2 x 3 x 32), as a trace that baked in the sequence length would write
    reshaped.graph.initializer.append(numpy_helper.from_array(np.array([2, 3, 32], dtype=np.int64), "fixed"))
    reshaped.graph.node[-1].output[0] = "r"
    reshaped.graph.node.append(helper.make_node("Reshape", ["r", "fixed"], ["y"], name="baked"))
    onnx.save(reshaped, str(path))
    assert run_checked(path, _x(2, 3))["y"].shape == (2, 3, 32)
    with pytest.raises(RuntimeError, match=r"^fixed.onnx fails in onnxruntime at shape 4 x 7 x 16 \(.+\); "
                                           r"a dimension was probably baked in$"):
        run_checked(path, _x(4, 7))


def test_run_checked_passes_a_missing_input_on_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    with pytest.raises(ValueError, match="no value for graph input"):
        run_checked(path, {"other": np.zeros((1, 1, 16), dtype=np.float32)})


def test_max_abs_diff_over_kept_positions() -> None:
    a = np.zeros((2, 3, 4))
    b = np.zeros((2, 3, 4))
    b[1, 2] = 5.0
    b[0, 0, 0] = -0.5
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    assert max_abs_diff(a, b) == 5.0
    assert max_abs_diff(a, b, mask) == 0.5  # the padded position is not compared
    assert max_abs_diff(a[0, 0], b[0, 0], mask) == 0.5  # a mask that does not fit the shape is not applied
    b[1, 2, 0] = np.nan
    assert max_abs_diff(a, b, mask) == 0.5
    assert np.isnan(max_abs_diff(a, b))
    assert max_abs_diff(a, b, np.zeros((2, 3))) == 0.0  # nothing kept
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\) != expected \(2, 4, 4\)"):
        max_abs_diff(a, np.zeros((2, 4, 4)))


def test_check_outputs_close_gives_the_worst_difference_and_names_what_failed() -> None:
    want = {"a": np.zeros((2, 3)), "b": np.zeros(4)}
    got = {"a": np.full((2, 3), 1e-5), "b": np.full(4, 3e-5), "extra": np.ones(1)}
    assert check_outputs_close(got, want, ["a", "b"], 1e-4, "x") == pytest.approx(3e-5)
    assert check_outputs_close(got, want, ["a"], 1e-4, "x") == pytest.approx(1e-5)  # only the named outputs
    with pytest.raises(ValueError, match=r"^m at shape 2 x 3: output 'b' differs by 3e-05 \(tolerance 1e-05\)$"):
        check_outputs_close(got, want, ["a", "b"], 1e-5, "m at shape 2 x 3")
    with pytest.raises(ValueError, match=r"output 'c' is missing \(got a, b, extra\)"):
        check_outputs_close(got, {**want, "c": np.zeros(1)}, ["c"], 1.0, "m")
    with pytest.raises(ValueError, match=r"output 'a': shape \(2, 3\) != expected \(3, 2\); an axis was probably"):
        check_outputs_close(got, {"a": np.zeros((3, 2))}, ["a"], 1.0, "m")
    got["a"][0, 0] = np.nan
    with pytest.raises(ValueError, match="output 'a' differs by nan"):  # NaN never passes a tolerance
        check_outputs_close(got, want, ["a"], 1e9, "m")


def _io(batch: int = 2, seq: int = 16) -> IOSpec:
    return IOSpec(input_names=["x"], output_names=["y"], dynamic_axes={}, export_batch=batch, export_seq=seq)


@pytest.mark.parametrize(("seq", "longest", "other"), [
    (16, None, 35),  # 2 x seq + 3
    (16, 30, 23),  # seq + 7 when 2 x seq + 3 is too long
    (16, 20, 8),  # half when both are
    (16, 16, 8),
    (2, 2, 1),  # seq - 1: 2 // 2 is 1 too
    (1, 1, 1),  # nothing else fits: the export shape twice, at another batch
])
def test_the_second_check_shape_differs_in_batch_and_sequence_within_the_models_positions(
        seq: int, longest: int | None, other: int) -> None:
    assert shapes_to_check(_io(2, seq), longest) == [(2, seq), (3, other)]


def _fake_ctx(longest: int, seq: int, loaded: list[torch.nn.Module]) -> Any:
    """A context whose model allows ``longest`` positions; each load appends a fresh module to ``loaded``."""
    def load() -> SimpleNamespace:
        loaded.append(torch.nn.Linear(4, 3).eval())
        return SimpleNamespace(module=loaded[-1], max_positions=longest)

    rng = np.random.default_rng(0)
    return SimpleNamespace(extra={}, model=SimpleNamespace(load=load, loaded_max_positions=longest),
                           io=_io(2, seq),
                           sample_inputs=lambda b, s: {"x": rng.standard_normal((b, s, 4)).astype(np.float32)})


def test_the_check_inputs_stay_within_the_models_positions() -> None:
    ctx = _fake_ctx(64, 40, [])
    assert max_positions(ctx) == 64
    assert [x["x"].shape for x in inputs_to_check(ctx)] == [(2, 40, 4), (3, 47, 4)]  # 2 x 40 + 3 is over 64


def test_fresh_reference_runs_one_freshly_loaded_model_at_the_check_shapes() -> None:
    torch.manual_seed(0)
    loaded: list[torch.nn.Module] = []
    reference, inputs, expected = fresh_reference(_fake_ctx(20, 16, loaded))
    assert len(loaded) == 1 and reference.module is loaded[0]
    assert [x["x"].shape for x in inputs] == [(2, 16, 4), (3, 8, 4)]  # within its 20 positions
    assert [set(out) for out in expected] == [{"y"}, {"y"}]
    for x, out in zip(inputs, expected, strict=True):
        with torch.no_grad():
            want = loaded[0](torch.from_numpy(x["x"])).numpy()
        assert out["y"].shape == want.shape and np.abs(out["y"] - want).max() < 1e-6


def test_check_at_shapes_compares_each_shape_and_names_the_one_that_fails() -> None:
    inputs = [{"x": np.zeros((2, 5))}, {"x": np.zeros((3, 9))}]
    expected = [{"y": np.zeros((2, 5))}, {"y": np.zeros((3, 9))}]

    def run(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": x["x"] + (1e-6 if x["x"].shape[0] == 2 else 1e-3)}

    with pytest.raises(ValueError, match=r"^model.onnx at shape 3 x 9: output 'y' differs by 0.001"):
        check_at_shapes(run, "model.onnx", inputs, expected, ["y"], 1e-4)
    assert check_at_shapes(run, "model.onnx", inputs, expected, ["y"], 1e-2) == pytest.approx([1e-6, 1e-3])
    with pytest.raises(ValueError):  # as many expected outputs as inputs
        check_at_shapes(run, "model.onnx", inputs, expected[:1], ["y"], 1.0)


def test_count_tracer_warnings_counts_only_tracer_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("converting a tensor to a Python boolean", torch.jit.TracerWarning, stacklevel=1)
        warnings.warn("converting a tensor to a Python index", torch.jit.TracerWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert count_tracer_warnings(caught) == 2
    assert count_tracer_warnings([]) == 0


def test_shape_text_is_the_first_inputs_shape() -> None:
    assert shape_text({"input_ids": np.zeros((3, 77)), "x": np.zeros((1,))}) == "3 x 77"
