"""int8_dynamic on the tiny BERT: smaller, close to its parent, also after ort_optimize."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from pydantic import ValidationError

from passes.precision import smoothing
from passes.precision.int8_dynamic import Int8DynamicConfig, Int8DynamicPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import PassContext
from pipeline.model.inputs import random_tokens
from pipeline.runtime.runner import run_onnx
from pipeline.verify.metrics import compare

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# Measured on the tiny random BERT: 0.9999 (plain and fused). Real MiniLM is far lower (FACTS.md).
MIN_COSINE = 0.995


def _quantize(parent: Artifact, ctx: PassContext, out: Path, **config: object):
    out.mkdir()
    return Int8DynamicPass(Int8DynamicConfig(**config)).run(parent, ctx, out)


def _cosine_to(reference: Path, path: Path) -> float:
    inputs = random_tokens(NAMES, 3, 77, 30522)
    want, got = run_onnx(reference, inputs)["last_hidden_state"], run_onnx(path, inputs)["last_hidden_state"]
    assert got.shape == want.shape == (3, 77, 32)
    return compare(want, got, inputs["attention_mask"])["cos_min"]


def test_quantizes_and_stays_close(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q")
    path = tmp_path / "q" / output.file
    assert output.meta["precision"] == "int8"
    assert output.stats["quantized_ops"].get("MatMulInteger", 0) >= 8  # 2 layers x (q, k, v, out, ff1, ff2)
    assert output.stats["bytes_after"] < 0.4 * output.stats["bytes_before"]
    assert path.stat().st_size < 0.4 * tiny_onnx.path.stat().st_size
    assert not output.warnings
    assert _cosine_to(tiny_onnx.path, path) > MIN_COSINE


def test_it_writes_nothing_but_its_model_and_nothing_beside_its_parent(tiny_onnx: Artifact, tiny_ctx: PassContext,
                                                                      tmp_path: Path) -> None:
    """quantize_dynamic writes '<model>-inferred.onnx' beside the model it reads: not into the
    parent's folder, nor into the step's."""
    parent_files = sorted(p.name for p in tiny_onnx.path.parent.iterdir())
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [output.file]
    assert sorted(p.name for p in tiny_onnx.path.parent.iterdir()) == parent_files


def test_quantizes_an_optimized_model(tiny_onnx: Artifact, tiny_fused: Artifact, tiny_ctx: PassContext,
                                    tmp_path: Path) -> None:
    plain = _quantize(tiny_onnx, tiny_ctx, tmp_path / "plain")
    output = _quantize(tiny_fused, tiny_ctx, tmp_path / "q")
    # every weight MatMul is quantized, also those fed by fused (untyped) contrib ops
    assert output.stats["quantized_ops"]["MatMulInteger"] == plain.stats["quantized_ops"]["MatMulInteger"]
    assert _cosine_to(tiny_onnx.path, tmp_path / "q" / output.file) > MIN_COSINE


def test_nodes_to_exclude_stay_float(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    source = onnx.load(str(tiny_onnx.path))
    target = next(n.name for n in source.graph.node if n.op_type == "MatMul" and "intermediate" in n.name)
    plain = _quantize(tiny_onnx, tiny_ctx, tmp_path / "plain").stats["quantized_ops"]["MatMulInteger"]
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q", nodes_to_exclude=[target])
    model = onnx.load(str(tmp_path / "q" / output.file))
    assert any(n.name == target and n.op_type == "MatMul" for n in model.graph.node)
    assert output.stats["quantized_ops"]["MatMulInteger"] == plain - 1
    # a glob: the feed-forward output MatMul of each of the 2 layers, not the attention output one
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "glob", nodes_to_exclude=["*layer.[0-9]/output/dense/MatMul"])
    assert output.stats["excluded_nodes"] == 2
    assert output.stats["quantized_ops"]["MatMulInteger"] == plain - 2
    with pytest.raises(ValueError, match="no node named"):
        _quantize(tiny_onnx, tiny_ctx, tmp_path / "typo", nodes_to_exclude=["no/such/node*"])


def test_refuses_a_non_fp32_parent(tmp_path: Path, tiny_ctx: PassContext) -> None:
    parent = Artifact(step_folder="03_fp16", format=Format.ONNX, key="k", path=tmp_path / "model.onnx",
                      meta={"precision": "fp16"})
    with pytest.raises(ValueError, match="fp16"):
        Int8DynamicPass(Int8DynamicConfig()).run(parent, tiny_ctx, tmp_path)


@pytest.mark.parametrize("bad", [{"op_types": ["Softmax"]}, {"weight_type": "int4"}, {"per_chanel": True}])
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Int8DynamicConfig(**bad)


def test_smoothing_rewrites_before_quantizing(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q", per_channel=True, smooth=True, outlier_channels=2)
    done = output.stats["smoothing"]
    assert done["smoothed"] and done["split"] and set(done["split"].values()) == {2}
    model = onnx.load(str(tmp_path / "q" / output.file))
    float_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert {smoothing.float_part_name(node) for node in done["split"]} <= float_matmuls  # never quantized
    assert _cosine_to(tiny_onnx.path, tmp_path / "q" / output.file) > MIN_COSINE
