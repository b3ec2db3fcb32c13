"""Tests of the openvino_convert pass and of OpenVINO artifacts in the Runner: from ONNX and from eager,
dynamic batch and sequence, names kept, outputs equal to the parent's at shapes other than the export's."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")

from passes._support.onnx_io import max_abs_diff  # noqa: E402
from passes.export.openvino_convert import OpenVinoConvertConfig, OpenVinoConvertPass  # noqa: E402
from pipeline.core.artifact import Artifact, Format  # noqa: E402
from pipeline.engine.pass_api import IOSpec, PassContext, PassOutput  # noqa: E402
from pipeline.engine.postconditions import check_openvino  # noqa: E402
from pipeline.runtime.runner import Runner, run_module, run_onnx  # noqa: E402


def _run(ctx: PassContext, parent: Artifact, out: Path) -> tuple[PassOutput, Artifact]:
    out.mkdir()
    result = OpenVinoConvertPass(OpenVinoConvertConfig()).run(parent, ctx, out)
    artifact = Artifact(step_folder="openvino", format=Format.OPENVINO, key="ov", path=out / result.file,
                        meta=result.meta)
    return result, artifact


def test_from_onnx_it_keeps_names_and_dynamic_axes_and_matches(tiny_ctx: PassContext, tiny_onnx: Artifact,
                                                               tiny_io: IOSpec, tmp_path: Path) -> None:
    result, artifact = _run(tiny_ctx, tiny_onnx, tmp_path / "ov")
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["model.bin", "model.xml"]
    check_openvino(artifact.path, tiny_io)
    assert result.meta["precision"] == "fp32" and result.stats["source"] == "onnx"
    assert result.stats["ops"] > 0 and result.stats["check"][1]["max_abs_diff"] <= 1e-3
    for batch, seq in [(1, 9), (3, 77)]:
        inputs = tiny_ctx.sample_inputs(batch, seq)
        got = Runner(tiny_ctx.model).open(artifact)(inputs)["last_hidden_state"]
        want = run_onnx(tiny_onnx.path, inputs)["last_hidden_state"]
        assert got.shape == (batch, seq, 32)
        assert max_abs_diff(got, want, inputs["attention_mask"]) <= 1e-4


def test_from_eager_it_names_inputs_as_the_recipe_does(tiny_ctx: PassContext, eager_artifact: Artifact,
                                                       tiny_io: IOSpec, tmp_path: Path) -> None:
    result, artifact = _run(tiny_ctx, eager_artifact, tmp_path / "ov")
    check_openvino(artifact.path, tiny_io)
    assert result.stats["source"] == "eager"
    inputs = tiny_ctx.sample_inputs(2, 41)
    got = Runner(tiny_ctx.model).open(artifact)(inputs)["last_hidden_state"]
    want = run_module(tiny_ctx.model.load().module, inputs, tiny_io.input_names,
                      tiny_io.output_names)["last_hidden_state"]
    assert max_abs_diff(got, want, inputs["attention_mask"]) <= 1e-4


def test_a_fixed_axis_breaks_the_post_condition(tiny_ctx: PassContext, tiny_onnx: Artifact, tiny_io: IOSpec,
                                               tmp_path: Path) -> None:
    import openvino as ov

    _, artifact = _run(tiny_ctx, tiny_onnx, tmp_path / "ov")
    model = ov.Core().read_model(str(artifact.path))
    model.reshape({"input_ids": [2, 16], "attention_mask": [2, 16], "token_type_ids": [2, 16]})
    fixed = tmp_path / "fixed.xml"
    ov.save_model(model, str(fixed), compress_to_fp16=False)
    with pytest.raises(ValueError, match=r"fixed sizes in the IR: input_ids\[0\]=2, input_ids\[1\]=16"):
        check_openvino(fixed, tiny_io)
