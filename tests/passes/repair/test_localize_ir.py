"""Tests of the OpenVINO ranking of a repair: each MatMul's own harm, from one NNCF build of the tiny BERT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

from passes.export.openvino_convert import OpenVinoConvertConfig, OpenVinoConvertPass  # noqa: E402
from passes.precision.nncf_int8 import NncfInt8Config, quantize, quantized_counts  # noqa: E402
from passes.repair.localize_ir import activation_sources, quantize_only, rank_by_own_harm  # noqa: E402
from pipeline.core.artifact import Artifact  # noqa: E402
from pipeline.engine.pass_api import PassContext  # noqa: E402


@pytest.fixture
def built(tiny_ctx: PassContext, tiny_onnx: Artifact, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(the tiny BERT's fp32 IR, its NNCF int8 build with the first MatMul left in float, the MatMuls)."""
    import openvino as ov

    out = tmp_path / "ir"
    out.mkdir()
    parent = out / OpenVinoConvertPass(OpenVinoConvertConfig()).run(tiny_onnx, tiny_ctx, out).file
    matmuls = {op.get_friendly_name(): "MatMul" for op in ov.Core().read_model(str(parent)).get_ordered_ops()
               if op.get_type_name() == "MatMul"}
    samples = [{port.get_any_name(): inputs[port.get_any_name()] for port in ov.Core().read_model(str(parent)).inputs}
               for inputs in [tiny_ctx.sample_inputs(2, 12), tiny_ctx.sample_inputs(2, 20)]]
    first = sorted(matmuls)[0]
    reduced = tmp_path / "int8" / "model.xml"
    reduced.parent.mkdir()
    ov.save_model(quantize(ov.Core().read_model(str(parent)), samples, NncfInt8Config(), [first]), str(reduced),
                  compress_to_fp16=False)
    return parent, reduced, matmuls


def test_only_the_named_matmul_keeps_its_activation_quantizer(built: tuple[Path, Path, dict[str, str]]) -> None:
    import openvino as ov

    parent, reduced, matmuls = built
    assert quantized_counts(ov.Core().read_model(str(reduced)))["matmuls_quantized"] == len(matmuls) - 1
    feeds = activation_sources(ov.Core().read_model(str(parent)), set(matmuls))
    none = ov.Core().read_model(str(reduced))
    assert quantize_only(none, None, [])
    assert quantized_counts(none)["matmuls_quantized"] == 0
    name = sorted(matmuls)[1]
    one = ov.Core().read_model(str(reduced))
    assert quantize_only(one, name, feeds[name])
    fed = [op.get_friendly_name() for op in one.get_ordered_ops() if op.get_type_name() == "MatMul" and any(
        port.get_source_output().get_node().get_type_name() == "FakeQuantize" for port in op.inputs())]
    assert fed == [name]
    assert not quantize_only(ov.Core().read_model(str(reduced)), "no such MatMul", [])


def test_every_candidate_is_ranked_and_one_left_in_float_harms_nothing(
        tiny_ctx: PassContext, built: tuple[Path, Path, dict[str, str]]) -> None:
    parent, reduced, matmuls = built
    probes = [tiny_ctx.sample_inputs(2, 16), tiny_ctx.sample_inputs(1, 9)]
    rows = rank_by_own_harm(reduced, parent, probes, set(matmuls), matmuls)
    assert sorted(row["node"] for row in rows) == sorted(matmuls)
    floated = next(row for row in rows if row["node"] == sorted(matmuls)[0])
    assert floated is rows[-1] and floated["sqnr_db"] == "inf"  # its outputs are the weights-only build's
    sqnr = [row["sqnr_db"] for row in rows[:-1]]
    assert all(isinstance(value, float) and math.isfinite(value) for value in sqnr)
    cosines = [row["cos_min"] for row in rows]
    assert cosines == sorted(cosines)
