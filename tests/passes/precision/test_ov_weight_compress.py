"""Tests of the ov_weight_compress pass on the tiny Llama's IR: int8 and int4 weights counted by their constants'
types, the embedding and the output projection compressed or kept in float as asked, int4 with AWQ and scale
estimation on calibration prompts, a repair that takes MatMuls back to int8, and the ranking it uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

from passes._support.ov_layers import find_layers, matmul_precisions  # noqa: E402
from passes.export.openvino_convert import OpenVinoConvertConfig, OpenVinoConvertPass  # noqa: E402
from passes.precision.ov_weight_compress import OvWeightCompressConfig, OvWeightCompressPass  # noqa: E402
from passes.repair.weight_error import Grid, rounded  # noqa: E402
from pipeline.core.artifact import Artifact, Format  # noqa: E402
from pipeline.engine.context import make_context  # noqa: E402
from pipeline.engine.pass_api import GateResult, PassContext, PassOutput  # noqa: E402
from pipeline.runtime.runner import Runner  # noqa: E402
from pipeline.verify.metrics import compare  # noqa: E402

BODY = 14  # 2 layers x (q, k, v, o, gate, up, down)


@pytest.fixture(scope="module")
def ctx(llama_ctx: PassContext) -> PassContext:
    """The tiny Llama as a decoder (this folder's conftest)."""
    return llama_ctx


@pytest.fixture(scope="module")
def ir(ctx: PassContext, llama_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """The tiny Llama's fp32 IR, through its ONNX export."""
    ir_dir = tmp_path_factory.mktemp("ir")
    result = OpenVinoConvertPass(OpenVinoConvertConfig()).run(llama_onnx, ctx, ir_dir)
    return Artifact(step_folder="ir", format=Format.OPENVINO, key="ir", path=ir_dir / result.file, meta=result.meta)


def _run(ctx: PassContext, parent: Artifact, out: Path, **config: Any) -> tuple[PassOutput, Artifact]:
    out.mkdir()
    result = OvWeightCompressPass(OvWeightCompressConfig(**config)).run(parent, ctx, out)
    return result, Artifact(step_folder="w", format=Format.OPENVINO, key="w", path=out / result.file,
                            meta=result.meta)


def _min_cosine(ctx: PassContext, parent: Artifact, child: Artifact) -> float:
    inputs = ctx.sample_inputs(3, 9)
    want = Runner(ctx.model).open(parent)(inputs)["logits"]
    got = Runner(ctx.model).open(child)(inputs)["logits"]
    return float(compare(want, got, inputs["attention_mask"][:, -9:])["cos_min"])


def test_the_layers_are_found(ir: Artifact) -> None:
    import openvino as ov

    layers = find_layers(ov.Core().read_model(str(ir.path)))
    assert layers.embeddings == ["/model/model/embed_tokens/Gather"]
    assert layers.lm_head == "logits" and len(layers.body) == BODY


def test_int8_compresses_every_weight(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    result, artifact = _run(ctx, ir, tmp_path / "w8", mode="int8_asym")
    assert result.meta["precision"] == "int8" and result.meta["weights"] == "int8_asym"
    assert result.stats["constant_types"] == {"u8": BODY + 2}
    assert result.stats["matmuls"] == {"int8": BODY + 1}
    assert result.stats["embedding"]["precision"] == {"/model/model/embed_tokens/Gather": "int8"}
    assert _min_cosine(ctx, ir, artifact) > 0.999


def test_int8_keeps_the_embedding_and_output_projection_in_float(ctx: PassContext, ir: Artifact,
                                                                 tmp_path: Path) -> None:
    result, _ = _run(ctx, ir, tmp_path / "w8", mode="int8_sym", embedding=False, lm_head=False)
    assert result.stats["constant_types"] == {"i8": BODY, "f32": 2}
    assert result.stats["lm_head"] == {"compressed": False, "node": "logits", "precision": "float"}
    assert result.meta["embedding"] is False and result.meta["lm_head"] is False


def test_int4_body_with_8_bit_ends(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    result, artifact = _run(ctx, ir, tmp_path / "w4", mode="int4_asym", group_size=32, lm_head=False)
    assert result.meta["precision"] == "int4" and result.meta["group_size"] == 32
    assert result.stats["constant_types"] == {"u4": BODY, "u8": 1, "f32": 1}
    assert result.stats["matmuls"] == {"int4": BODY, "float": 1} and result.stats["calibration_prompts"] == 0
    assert _min_cosine(ctx, ir, artifact) > 0.95


@pytest.mark.parametrize(("fallback", "int4"), [("adjust", BODY), ("ignore", 2)])
def test_a_group_that_does_not_divide_the_channels_falls_back(ctx: PassContext, ir: Artifact, tmp_path: Path,
                                                              fallback: str, int4: int) -> None:
    # 128 divides only the down projections' 128 input channels (hidden size 64)
    result, _ = _run(ctx, ir, tmp_path / "w4", mode="int4_asym", group_size=128, group_size_fallback=fallback)
    assert result.stats["matmuls"]["int4"] == int4 and result.meta["group_size_fallback"] == fallback


def test_int4_with_awq_and_scale_estimation_on_prompts(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    result, artifact = _run(ctx, ir, tmp_path / "awq", mode="int4_sym", group_size=32, ratio=0.8, awq=True,
                            scale_estimation=True, calibration_prompts=4, activation_group_size=0)
    assert result.stats["calibration_prompts"] == 4
    types = result.stats["constant_types"]
    assert types["i4"] + types["u8"] == BODY + 2 and 0 < types["u8"] - 2 < BODY // 2  # ratio: some body int8
    assert set(result.stats["body_not_at_mode"].values()) == {"int8"}
    assert result.meta["awq"] and result.meta["scale_estimation"]
    assert result.meta["runtime_options"] == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
    assert _min_cosine(ctx, ir, artifact) > 0.95


def test_a_repair_takes_the_most_sensitive_matmuls_back_to_int8(ctx: PassContext, ir: Artifact,
                                                                tmp_path: Path) -> None:
    import openvino as ov

    asked: list[str] = []

    def gate(path: Path, precision: str) -> GateResult:
        """Passes once at least 3 body MatMuls are int8."""
        asked.append(precision)
        int8 = list(matmul_precisions(ov.Core().read_model(str(path))).values()).count("int8") - 1  # lm_head
        ok = int8 >= 3
        return GateResult(ok, [] if ok else [f"{int8} int8"], 0.99 + int8 / 1e3, 0.0)

    ctx_with_gate = make_context(ctx.model, ctx.io, ctx.base_dir)
    ctx_with_gate.gate = gate
    result, artifact = _run(ctx_with_gate, ir, tmp_path / "rep", mode="int4_asym", group_size=-1, repair=True,
                            calibration_prompts=2)
    repaired = result.stats["repaired"]
    assert repaired["to"] == "int8" and len(repaired["layers"]) == 3 and set(asked) == {"int4"}
    found = matmul_precisions(ov.Core().read_model(str(artifact.path)))
    assert set(repaired["layers"]) == set(result.stats["body_not_at_mode"])
    assert all(found[name] == "int8" for name in repaired["layers"])
    ranking = result.stats["repair"]["localization"]["sensitivity"]
    assert len(ranking) == BODY and [row["node"] for row in ranking[:3]] == repaired["layers"]
    assert ranking[0]["cos_min"] <= ranking[-1]["cos_min"]


def test_an_int8_repair_keeps_matmuls_in_float(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    import openvino as ov

    def gate(path: Path, precision: str) -> GateResult:
        """Passes once 2 MatMuls are float."""
        floats = list(matmul_precisions(ov.Core().read_model(str(path))).values()).count("float")
        return GateResult(floats >= 2, [] if floats >= 2 else [f"{floats} float"], 0.99 + floats / 1e3, 0.0)

    ctx_with_gate = make_context(ctx.model, ctx.io, ctx.base_dir)
    ctx_with_gate.gate = gate
    result, artifact = _run(ctx_with_gate, ir, tmp_path / "rep8", mode="int8_asym", repair=True, repair_to="float",
                            calibration_prompts=2)
    repaired = result.stats["repaired"]
    assert repaired["to"] == "float" and len(repaired["layers"]) == 2 and result.stats["repair"]["passed"]
    found = matmul_precisions(ov.Core().read_model(str(artifact.path)))
    assert {name for name, value in found.items() if value == "float"} == set(repaired["layers"])


def test_options_that_do_nothing_in_int8_are_refused() -> None:
    with pytest.raises(ValidationError, match="awq"):
        OvWeightCompressConfig(mode="int8_asym", awq=True)
    with pytest.raises(ValidationError, match="repair_to"):
        OvWeightCompressConfig(mode="int8_sym", repair=True)
    OvWeightCompressConfig(mode="int8_sym", repair=True, repair_to="float")


@pytest.mark.parametrize(("symmetric", "bits"), [(False, 4), (True, 4), (False, 8)])
def test_rounding_lands_on_the_grid_within_half_a_step(symmetric: bool, bits: int) -> None:
    weight = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    back = rounded(weight, Grid(bits, symmetric, 32)).reshape(6, 2, 32)
    groups = weight.reshape(6, 2, 32)
    if symmetric:  # a scale of the largest magnitude over 2^(bits-1): the top level is clipped by one step
        bound = np.abs(groups).max(-1) / 2 ** (bits - 1)
    else:
        bound = (groups.max(-1) - groups.min(-1)) / (2 ** bits - 1) / 2
    assert np.all(np.abs(back - groups).max(-1) <= bound + 1e-6)
    assert all(len(np.unique(back[row, group])) <= 2 ** bits for row in range(6) for group in range(2))
