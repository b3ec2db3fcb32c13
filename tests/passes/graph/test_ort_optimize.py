"""ort_optimize on the tiny BERT: fusions counted, missing ones warned about, outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from passes.graph.ort_optimize import OrtOptimizeConfig, OrtOptimizePass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import PassContext
from pipeline.model.inputs import random_tokens
from pipeline.runtime.runner import run_onnx

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _optimize(tiny_onnx: Artifact, ctx: PassContext, out: Path, **config: object):
    out.mkdir()
    return OrtOptimizePass(OrtOptimizeConfig(**config)).run(tiny_onnx, ctx, out)


def test_fuses_and_matches_parent(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _optimize(tiny_onnx, tiny_ctx, tmp_path / "opt")
    fused = output.stats["fused"]
    assert fused.get("SkipLayerNormalization", 0) > 0
    assert sum(fused.get(op, 0) for op in ("Gelu", "FastGelu", "BiasGelu")) > 0
    assert output.stats["nodes_after"] < output.stats["nodes_before"]
    assert output.meta["precision"] == "fp32"
    attention = sum(fused.get(op, 0) for op in ("Attention", "MultiHeadAttention"))
    missing = {w.split()[2] for w in output.warnings if w.startswith("expected fusion ")}
    assert missing == ({"Attention"} if attention == 0 else set())

    inputs = random_tokens(NAMES, 3, 77, 30522)
    keep = inputs["attention_mask"].astype(bool)
    want = run_onnx(tiny_onnx.path, inputs)["last_hidden_state"]
    got = run_onnx(tmp_path / "opt" / output.file, inputs)["last_hidden_state"]
    assert got.shape == want.shape == (3, 77, 32)
    assert np.abs(got - want)[keep].max() < 1e-4


def test_skip_layer_norms_are_written_as_sum_and_layer_norm(tiny_onnx: Artifact, tiny_ctx: PassContext,
                                                           tmp_path: Path) -> None:
    fused = _optimize(tiny_onnx, tiny_ctx, tmp_path / "fused")
    output = _optimize(tiny_onnx, tiny_ctx, tmp_path / "opt", unfuse_skip_layer_norm=True)
    count = fused.stats["fused"]["SkipLayerNormalization"]
    assert output.stats["skip_layer_norms_unfused"] == count
    assert not any("unfuse" in w for w in output.warnings)
    ops = [node.op_type for node in onnx.load(str(tmp_path / "opt" / output.file)).graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("Sum") == count
    inputs = random_tokens(NAMES, 3, 41, 30522)
    want = run_onnx(tmp_path / "fused" / fused.file, inputs)["last_hidden_state"]
    got = run_onnx(tmp_path / "opt" / output.file, inputs)["last_hidden_state"]
    assert np.abs(got - want)[inputs["attention_mask"].astype(bool)].max() < 1e-5


def test_disabled_fusion_is_warned_about(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _optimize(tiny_onnx, tiny_ctx, tmp_path / "opt", disable=["gelu", "bias_gelu"])
    assert not any(output.stats["fused"].get(op, 0) for op in ("Gelu", "FastGelu", "BiasGelu"))
    assert any("expected fusion Gelu" in w for w in output.warnings)


def test_parent_check_enforces_tolerance(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differs from its parent"):
        _optimize(tiny_onnx, tiny_ctx, tmp_path / "opt", tolerance=1e-12)


@pytest.mark.parametrize("bad", [{"disable": ["no_such_fusion"]}, {"model_type": "nope"}, {"opt_level": 3},
                                 {"unknown_key": 1}])
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        OrtOptimizeConfig(**bad)


def test_eager_attention_export_fuses_attention_and_skip_layer_norm(tiny_bert_config: Path, tiny_io,
                                                                    tmp_path: Path) -> None:
    from passes.export.onnx_export import OnnxExportPass
    from pipeline.engine.context import make_context
    from pipeline.model.loading import ModelHandle
    from pipeline.model.spec import ModelSpec

    spec = ModelSpec(source=str(tiny_bert_config), tokenizer="packaged:all-MiniLM-L6-v2", attn_implementation="eager")
    handle = ModelHandle(spec, "feature-extraction", tiny_io.input_names, tiny_io.output_names)
    ctx = make_context(handle, tiny_io, base_dir=tmp_path)
    eager = Artifact(step_folder="eager", format=Format.EAGER, key=handle.source_key)
    (tmp_path / "export").mkdir()
    exported = OnnxExportPass(OnnxExportPass.Config()).run(eager, ctx, tmp_path / "export")
    parent = Artifact(step_folder="01_onnx_export", format=Format.ONNX, key="k",
                      path=tmp_path / "export" / exported.file, meta={"precision": "fp32"})
    (tmp_path / "opt").mkdir()
    out = OrtOptimizePass(OrtOptimizePass.Config()).run(parent, ctx, tmp_path / "opt")
    layers = 2
    assert out.stats["fused"]["Attention"] == layers
    assert out.stats["fused"]["SkipLayerNormalization"] == 2 * layers
    assert out.stats["fused"].get("EmbedLayerNormalization") == 1
    assert not out.warnings
