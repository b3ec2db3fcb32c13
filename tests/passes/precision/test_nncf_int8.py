"""Tests of the nncf_int8 pass on the tiny BERT's OpenVINO IR: quantized MatMuls, shapes other than the
export's, and a repair that keeps MatMuls in float through NNCF's ignored scope until the gate passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

from passes._support.ov_weights import runtime_options  # noqa: E402
from passes.export.openvino_convert import OpenVinoConvertConfig, OpenVinoConvertPass  # noqa: E402
from passes.precision.nncf_int8 import NncfInt8Config, NncfInt8Pass, quantized_counts  # noqa: E402
from pipeline.core.artifact import Artifact, Format  # noqa: E402
from pipeline.engine.pass_api import GateResult, PassContext, PassOutput  # noqa: E402
from pipeline.runtime.runner import Runner  # noqa: E402
from pipeline.verify.metrics import compare  # noqa: E402


@pytest.fixture
def tiny_ir(tiny_ctx: PassContext, tiny_onnx: Artifact, tmp_path: Path) -> Artifact:
    out = tmp_path / "ir"
    out.mkdir()
    result = OpenVinoConvertPass(OpenVinoConvertConfig()).run(tiny_onnx, tiny_ctx, out)
    return Artifact(step_folder="ir", format=Format.OPENVINO, key="ir", path=out / result.file, meta=result.meta)


def _run(ctx: PassContext, parent: Artifact, out: Path, **config: object) -> tuple[PassOutput, Artifact]:
    out.mkdir()
    result = NncfInt8Pass(NncfInt8Config(samples=8, **config)).run(parent, ctx, out)
    return result, Artifact(step_folder="int8", format=Format.OPENVINO, key="int8", path=out / result.file,
                            meta=result.meta)


def test_matmuls_are_quantized_and_the_ir_runs_at_other_shapes(tiny_ctx: PassContext, tiny_ir: Artifact,
                                                              tmp_path: Path) -> None:
    result, artifact = _run(tiny_ctx, tiny_ir, tmp_path / "int8")
    assert result.meta["precision"] == "int8" and result.stats["fake_quantize"] > 0
    assert result.stats["matmuls_quantized"] == result.stats["candidates"] > 0
    assert result.stats["matmuls_float"] == 0 and result.stats["calibration_samples"] == 8
    runner = Runner(tiny_ctx.model)
    for batch, seq in [(1, 9), (3, 77)]:
        inputs = tiny_ctx.sample_inputs(batch, seq)
        got = runner.open(artifact)(inputs)["last_hidden_state"]
        want = runner.open(tiny_ir)(inputs)["last_hidden_state"]
        assert got.shape == (batch, seq, 32) and np.isfinite(got).all()
        assert compare(want, got, inputs["attention_mask"])["cos_min"] > 0.9


def test_repair_keeps_matmuls_in_float_until_the_gate_passes(tiny_ctx: PassContext, tiny_ir: Artifact,
                                                            tmp_path: Path) -> None:
    import openvino as ov

    def gate(path: Path, precision: str) -> GateResult:  # passes once two MatMuls stay in float
        floats = quantized_counts(ov.Core().read_model(str(path)))["matmuls_float"]
        return GateResult(floats >= 2, [] if floats >= 2 else [f"{floats} in float"], 0.99 + floats / 1000, 0.0)

    ctx = dataclasses.replace(tiny_ctx, gate=gate)
    result, _ = _run(ctx, tiny_ir, tmp_path / "int8", repair=True, kept_as="float")
    repair = result.stats["repair"]
    assert repair["passed"] and len(repair["kept_in_float"]) == 2 and not result.warnings
    assert result.stats["matmuls_float"] == 2 and result.meta["weight_int8_dynamic"] == []
    assert len(repair["localization"]["sensitivity"]) == result.stats["candidates"]
    assert repair["speed"]["p50_ms_repaired"] > 0


def test_the_repair_gives_kept_matmuls_int8_weights_with_dynamic_groups_first(
        tiny_ctx: PassContext, tiny_ir: Artifact, tmp_path: Path) -> None:
    import openvino as ov

    def gate(path: Path, precision: str) -> GateResult:  # passes once a weighted MatMul is out of static int8
        dynamic = quantized_counts(ov.Core().read_model(str(path)))["matmuls_weight_int8_dynamic"]
        return GateResult(dynamic >= 1, [] if dynamic else ["none out"], 0.99 + dynamic / 1000, 0.0)

    result, artifact = _run(dataclasses.replace(tiny_ctx, gate=gate), tiny_ir, tmp_path / "int8", repair=True)
    kept = [entry["node"] for entry in result.stats["repair"]["kept_in_float"]]
    assert result.stats["repair"]["passed"] and not result.warnings
    # a kept MatMul with constant weights gets int8 weights; one of two activations (attention) stays float
    assert result.stats["matmuls_weight_int8_dynamic"] >= 1 and set(result.meta["weight_int8_dynamic"]) <= set(kept)
    assert result.stats["matmuls_weight_int8_dynamic"] + result.stats["matmuls_float"] == len(kept)
    assert result.meta["runtime_options"] == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}
    assert runtime_options(ov.Core().read_model(str(artifact.path))) == result.meta["runtime_options"]


def test_an_unknown_ignored_name_is_refused(tiny_ctx: PassContext, tiny_ir: Artifact, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ignored: the model has no MatMul named 'nope'"):
        _run(tiny_ctx, tiny_ir, tmp_path / "int8", ignored=["nope"])


def test_it_reads_only_an_fp32_ir(tiny_ctx: PassContext, tiny_onnx: Artifact, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reads an fp32 OpenVINO IR"):
        _run(tiny_ctx, tiny_onnx, tmp_path / "int8")


def test_a_run_through_openvino_and_nncf_exits_and_leaves_no_process(tmp_path: Path, tiny_bert_config: Path) -> None:
    """OpenVINO and NNCF send telemetry from forked children; those must not outlive the run holding its
    pipes (they did: they inherited the run's SIGTERM handler, so terminate() could not stop them)."""
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "ov.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction",
        "passes": ["onnx_export", "openvino_convert", {"nncf_int8": {"samples": 8}}],
        "verify": {"shapes": [[1, 9], [3, 77]], "sentence_batches": 1},
    }))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipeline", "optimize", str(recipe), "--no-bench", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert (out / "03_nncf_int8" / "model.xml").is_file()
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"processes left behind: {left.stdout}"
