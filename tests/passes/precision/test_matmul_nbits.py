"""matmul_nbits on the tiny BERT: MatMulNBits that onnxruntime runs, close to its parent, and a row's
output independent of its batch-mates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from passes.precision.matmul_nbits import MatMulNBitsConfig, MatMulNBitsPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import PassContext, PassOutput
from pipeline.model.inputs import DEFAULT_CORPUS, random_tokens
from pipeline.runtime.runner import run_onnx
from pipeline.verify.metrics import compare

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
WEIGHT_MATMULS = 12  # 2 layers x (q, k, v, attention output, ff1, ff2)
MIN_COSINE = 0.99  # measured on the tiny random BERT at 8 bits: 0.99999997 (plain and fused)
MIN_ALONE_VS_PADDED = 0.999  # measured: 1.0 at accuracy_level 4
MAX_ABS_ALONE_VS_PADDED = 1e-5  # measured: 0; its error to the parent is 6e-4
VERIFY = {"shapes": [[1, 9], [3, 77]], "sentence_batches": 1}


def _quantize(parent: Artifact, ctx: PassContext, out: Path, **config: object) -> PassOutput:
    out.mkdir()
    return MatMulNBitsPass(MatMulNBitsConfig(**config)).run(parent, ctx, out)


def _cosine_to(reference: Path, path: Path) -> float:
    inputs = random_tokens(NAMES, 3, 77, 30522)
    want, got = run_onnx(reference, inputs)["last_hidden_state"], run_onnx(path, inputs)["last_hidden_state"]
    assert got.shape == want.shape == (3, 77, 32)
    return compare(want, got, inputs["attention_mask"])["cos_min"]


def _alone_vs_padded(path: Path, ctx: PassContext) -> tuple[float, float]:
    """(min per-token cosine, max abs difference) between each padded sentence of a batch of real
    sentences and the same sentence run alone, over its tokens."""
    batch = ctx.calibration_inputs(DEFAULT_CORPUS, 1, 8)[0]
    together = run_onnx(path, batch)["last_hidden_state"]
    lengths = batch["attention_mask"].sum(axis=1)
    padded = [(row, int(length)) for row, length in enumerate(lengths) if length < batch["attention_mask"].shape[1]]
    assert len(padded) >= 4
    worst_cos, worst_abs = 1.0, 0.0
    for row, length in padded:
        alone = {name: value[row:row + 1, :length] for name, value in batch.items()}
        metrics = compare(run_onnx(path, alone)["last_hidden_state"], together[row:row + 1, :length],
                          alone["attention_mask"])
        worst_cos, worst_abs = min(worst_cos, metrics["cos_min"]), max(worst_abs, metrics["max_abs"])
    return worst_cos, worst_abs


def test_writes_matmul_nbits_close_to_its_parent(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q")
    path = tmp_path / "q" / output.file
    assert output.meta == {"precision": "int8", "weight_bits": 8, "block_size": 32}
    assert output.stats["matmul_nbits"] == WEIGHT_MATMULS and output.stats["float_matmuls"] == 0
    assert output.stats["bytes_after"] < output.stats["bytes_before"]  # the embeddings (float) dominate
    assert not output.warnings
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [output.file]
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert {n.domain for n in nbits} == {"com.microsoft"}
    attributes = {a.name: a.i for a in nbits[0].attribute}
    assert attributes["bits"] == 8 and attributes["block_size"] == 32 and attributes["accuracy_level"] == 4
    assert _cosine_to(tiny_onnx.path, path) > MIN_COSINE


def test_a_row_does_not_depend_on_its_batch_mates(tiny_fused: Artifact, tiny_ctx: PassContext,
                                                  tmp_path: Path) -> None:
    output = _quantize(tiny_fused, tiny_ctx, tmp_path / "q")
    assert output.stats["matmul_nbits"] >= 8  # q, k, v are fused into Attention; the rest stay MatMuls
    path = tmp_path / "q" / output.file
    cosine, max_abs = _alone_vs_padded(path, tiny_ctx)
    assert cosine >= MIN_ALONE_VS_PADDED
    # activations are quantized per row: measured 0 (int8_dynamic, one scale per batch: 7e-4)
    assert max_abs < MAX_ABS_ALONE_VS_PADDED
    assert _cosine_to(tiny_fused.path, path) > MIN_COSINE


def test_four_bits_and_exclusions(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    output = _quantize(tiny_onnx, tiny_ctx, tmp_path / "q", bits=4, symmetric=False,
                       nodes_to_exclude=["*layer.[0-9]/output/dense/MatMul"])
    assert output.meta["weight_bits"] == 4 and output.meta["precision"] == "int4"
    assert output.stats["excluded_nodes"] == 2
    assert output.stats["matmul_nbits"] == WEIGHT_MATMULS - 2 and output.stats["float_matmuls"] == 2
    model = onnx.load(str(tmp_path / "q" / output.file))
    assert {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"} == {4}
    run_onnx(tmp_path / "q" / output.file, random_tokens(NAMES, 2, 9, 30522))


def _gemm_only(path: Path) -> Artifact:
    """A one-node fp32 model, x @ W + b as a Gemm: what onnxsim makes of a Linear layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(np.zeros(16, np.float32), "bias")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "weight", "bias"], ["y"], name="dense/Gemm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
                              [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Artifact(step_folder="02_onnx_simplify", format=Format.ONNX, key="g", path=path, meta={"precision": "fp32"})


def test_a_parent_with_only_gemm_is_refused(tiny_ctx: PassContext, tmp_path: Path) -> None:
    parent = _gemm_only(tmp_path / "gemm.onnx")
    with pytest.raises(ValueError, match=r"no MatMul with a constant 2-D weight.*1 Gemm.*from: onnx_export"):
        _quantize(parent, tiny_ctx, tmp_path / "q")


def test_gemms_left_in_float_are_reported(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> None:
    """onnxsim fuses most MatMul + Add pairs of the tiny BERT into Gemm: those stay float, and it says so."""
    from passes.graph.onnx_simplify import OnnxSimplifyConfig, OnnxSimplifyPass

    folder = tmp_path / "simplified"
    folder.mkdir()
    simplified = OnnxSimplifyPass(OnnxSimplifyConfig()).run(tiny_onnx, tiny_ctx, folder)
    parent = Artifact(step_folder="02_onnx_simplify", format=Format.ONNX, key="s", path=folder / simplified.file,
                      meta={"precision": "fp32"})
    output = _quantize(parent, tiny_ctx, tmp_path / "q")
    assert 0 < output.stats["matmul_nbits"] < WEIGHT_MATMULS
    assert output.stats["float_gemms"] == WEIGHT_MATMULS - output.stats["matmul_nbits"]
    assert any("Gemm" in w and "from: onnx_export" in w for w in output.warnings)


@pytest.mark.parametrize("bad", [{"bits": 3}, {"block_size": 48}, {"block_size": 512}, {"accuracy_level": 5},
                                 {"symetric": True}])
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MatMulNBitsConfig(**bad)


def _run(recipe: Path) -> dict[str, Any]:
    """Optimize ``recipe`` without benchmarking; its report (the run must exit 0)."""
    from pipeline.cli import main

    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    return json.loads((Path("artifacts") / recipe.stem / "report.json").read_text())


def test_recipe_runs_end_to_end(write_tiny_recipe: Callable[..., Path]) -> None:
    report = _run(write_tiny_recipe("nbits", ["onnx_export", {"matmul_nbits": {}}], verify=VERIFY))
    step = report["artifacts"][-1]
    assert report["shipped_step"] == "matmul_nbits" and step["parity"]["passed"]
    assert step["stats"]["matmul_nbits"] == WEIGHT_MATMULS
    model = onnx.load(str(next(Path("artifacts/nbits").glob("*_matmul_nbits/model.onnx"))))
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == WEIGHT_MATMULS


def test_repair_keeps_the_most_harmful_matmuls_in_float(write_tiny_recipe: Callable[..., Path]) -> None:
    """4 bits against a bound they miss: the repair keeps MatMuls in float (named to the quantizer) until it passes."""
    step = {"matmul_nbits": {"bits": 4, "symmetric": False, "repair": True, "repair_to": "float"}}
    strict = {**VERIFY, "steps": {"matmul_nbits": {"tolerance": {"min_cosine": 0.999999}}}}
    stats = _run(write_tiny_recipe("repaired", ["onnx_export", step], verify=strict))["artifacts"][-1]["stats"]
    kept = stats["repair"]["kept_in_float"]
    assert stats["repair"]["passed"] and kept
    assert stats["float_matmuls"] == len(kept) and stats["matmul_nbits"] == WEIGHT_MATMULS - len(kept)
