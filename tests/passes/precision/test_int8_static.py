"""int8_static on the tiny BERT: QDQ nodes, close to its parent, calibration file checked and hashed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from passes.precision.int8_static import Int8StaticConfig, Int8StaticPass, preprocess
from pipeline.core.artifact import Artifact
from pipeline.core.errors import RecipeError
from pipeline.engine.pass_api import GateResult, PassContext
from pipeline.model.inputs import random_tokens
from pipeline.runtime.runner import run_onnx

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# Measured on the tiny random BERT: 0.9997 (MatMul + Gather, minmax and entropy alike).
MIN_COSINE = 0.995
FAST = {"samples": 16, "batch": 4}


def _cosine_to(reference: Path, path: Path) -> float:
    inputs = random_tokens(NAMES, 3, 77, 30522)
    want, got = run_onnx(reference, inputs)["last_hidden_state"], run_onnx(path, inputs)["last_hidden_state"]
    assert got.shape == want.shape == (3, 77, 32)
    keep = inputs["attention_mask"].astype(bool)
    a, b = got[keep].astype(np.float64), want[keep].astype(np.float64)
    return float((np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


def _quantize(parent: Artifact, ctx: PassContext, out: Path, **config: object):
    out.mkdir()
    return Int8StaticPass(Int8StaticConfig(**{**FAST, **config})).run(parent, ctx, out)


def test_quantizes_and_stays_close(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q")
    path = tmp_path / "q" / output.file
    ops = output.stats["quantized_ops"]
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert output.stats["matmuls_quantized"] >= 8 and output.stats["preprocess"] == "symbolic"
    assert output.stats["calibration_samples"] == 16 and output.stats["calibration_batches"] == 4
    assert output.meta["precision"] == "int8" and not output.warnings
    assert output.stats["bytes_after"] < 0.4 * output.stats["bytes_before"]  # the embeddings (Gather) too
    assert _cosine_to(tiny_onnx.path, path) > MIN_COSINE


def test_histogram_method_with_varied_lengths(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    lengths = {batch["input_ids"].shape[1] for batch in tiny_ctx.calibration_inputs(
        Path(__file__).parents[3] / "pipeline" / "data" / "sentences.txt", 4, 4)}
    assert len(lengths) > 1  # the batches really differ, so the padding is exercised
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q", method="entropy")
    assert output.stats["calibration_shape"][1] == max(lengths)
    assert _cosine_to(tiny_onnx.path, tmp_path / "q" / output.file) > MIN_COSINE


def test_fused_model_needs_preprocess(tiny_onnx: Artifact, tiny_fused: Artifact, tiny_ctx: PassContext,
                                      tmp_path: Path) -> None:
    output = _quantize(tiny_fused, tiny_ctx, tmp_path / "q")
    assert output.stats["matmuls_float"] == 0
    bare = _quantize(tiny_fused, tiny_ctx, tmp_path / "bare", preprocess=False)
    assert bare.stats["matmuls_float"] > 0  # MatMuls after fused ops have no type without it
    assert _cosine_to(tiny_onnx.path, tmp_path / "q" / output.file) > MIN_COSINE


def test_nodes_to_exclude_stay_float(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q", nodes_to_exclude=["*layer.[0-9]/output/dense/MatMul"])
    assert output.stats["excluded_nodes"] == 2 and output.stats["matmuls_float"] == 2
    assert _cosine_to(tiny_onnx.path, tmp_path / "q" / output.file) > MIN_COSINE


def test_the_repair_gives_kept_matmuls_int8_weights_with_dynamic_activations(
        tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    import onnx

    def gate(path: Path, precision: str) -> GateResult:  # passes once a MatMul is MatMulNBits
        nbits = sum(node.op_type == "MatMulNBits" for node in onnx.load(str(path), load_external_data=False).graph.node)
        return GateResult(nbits >= 1, [] if nbits else ["none"], 0.99 + nbits / 1000, 0.0)

    ctx = dataclasses.replace(tiny_ctx, gate=gate)
    output = _quantize(tiny_onnx, ctx, tmp_path / "q", repair=True, op_types=["MatMul"])
    kept = {entry["node"] for entry in output.stats["repair"]["kept_in_float"]}
    assert output.stats["repair"]["passed"] and output.meta["weight_int8_dynamic"] and not output.warnings
    model = onnx.load(str(tmp_path / "q" / output.file), load_external_data=False)
    nbits = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    assert [node.name for node in nbits] == output.meta["weight_int8_dynamic"] and len(nbits) <= len(kept)
    assert {attr.name: attr.i for attr in nbits[0].attribute}["bits"] == 8
    assert _cosine_to(tiny_onnx.path, tmp_path / "q" / output.file) > MIN_COSINE


def test_check_rejects_a_missing_file(tiny_ctx: PassContext) -> None:
    with pytest.raises(RecipeError, match=r"int8_static\.calibration: file .*nope\.txt does not exist"):
        Int8StaticPass(Int8StaticConfig(calibration="nope.txt")).check(tiny_ctx)
    Int8StaticPass(Int8StaticConfig()).check(tiny_ctx)  # the shipped corpus is there


def test_data_digest_follows_the_file(tiny_ctx: PassContext) -> None:
    path = tiny_ctx.resolve("calib.txt")
    path.write_text("one sentence\nanother one\n")
    pass_ = Int8StaticPass(Int8StaticConfig(calibration="calib.txt"))
    first = pass_.data_digest(tiny_ctx)
    assert pass_.data_digest(tiny_ctx) == first
    path.write_text("one sentence\nanother one, changed\n")
    assert pass_.data_digest(tiny_ctx) != first
    more = Int8StaticPass(Int8StaticConfig(calibration="calib.txt", samples=128)).data_digest(tiny_ctx)
    assert more != pass_.data_digest(tiny_ctx)


@pytest.mark.parametrize("bad", [{"op_types": ["Softmax"]}, {"method": "kl"}, {"samples": 0},
                                 {"activation_type": "int8"}, {"calibrate": "x.txt"}])
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Int8StaticConfig(**bad)


def test_preprocess_reads_a_relative_path(tiny_onnx: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Recipes write artifacts under a relative folder; preprocessing changes the working directory."""
    monkeypatch.chdir(tiny_onnx.path.parent.parent)
    relative = Path(tiny_onnx.path.parent.name) / tiny_onnx.path.name
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    path, done = preprocess(relative, scratch, external=False)
    assert done == "symbolic" and path.is_file()
