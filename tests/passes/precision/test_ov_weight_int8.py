"""Tests of the ov_weight_int8 pass on the tiny BERT's OpenVINO IR: int8 MatMul weights, the group size carried in
the IR, outputs close to the parent, a row that does not depend on its batch-mates, the choice of group size by
the gate and by timing, and a repair that keeps MatMul weights in float."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

from passes._support.ov_weights import GROUP_OPTION, compressed_matmuls, runtime_options  # noqa: E402
from passes.export.openvino_convert import OpenVinoConvertConfig, OpenVinoConvertPass  # noqa: E402
from passes.precision.ov_weight_int8 import OvWeightInt8Config, OvWeightInt8Pass  # noqa: E402
from pipeline.core.artifact import Artifact, Format  # noqa: E402
from pipeline.engine.context import make_context  # noqa: E402
from pipeline.engine.pass_api import Gate, GateResult, IOSpec, PassContext, PassOutput  # noqa: E402
from pipeline.model.inputs import load_sentences, tokenize  # noqa: E402
from pipeline.model.loading import ModelHandle  # noqa: E402
from pipeline.model.spec import ModelSpec  # noqa: E402
from pipeline.runtime.runner import Runner  # noqa: E402
from pipeline.runtime.sessions import openvino_model  # noqa: E402
from pipeline.verify.metrics import compare  # noqa: E402

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def ctx(tiny_bert_config: Path, tmp_path_factory: pytest.TempPathFactory) -> PassContext:
    """The tiny BERT's context, shared by this module's tests (each builds into its own folder)."""
    spec = ModelSpec(source=str(tiny_bert_config), tokenizer="packaged:all-MiniLM-L6-v2", seed=0)
    handle = ModelHandle(spec, "feature-extraction", NAMES, ["last_hidden_state"])
    axes = {name: {0: "batch", 1: "sequence"} for name in [*NAMES, "last_hidden_state"]}
    io = IOSpec(input_names=NAMES, output_names=["last_hidden_state"], dynamic_axes=axes, export_batch=2,
                export_seq=16)
    return make_context(handle, io, base_dir=tmp_path_factory.mktemp("ov-weight-ctx"))


@pytest.fixture(scope="module")
def ir(ctx: PassContext, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """The tiny BERT converted from eager to an fp32 IR."""
    out = tmp_path_factory.mktemp("ir")
    eager = Artifact(step_folder="eager", format=Format.EAGER, key=ctx.model.source_key)
    result = OpenVinoConvertPass(OpenVinoConvertConfig()).run(eager, ctx, out)
    return Artifact(step_folder="ir", format=Format.OPENVINO, key="ir", path=out / result.file, meta=result.meta)


def _run(ctx: PassContext, parent: Artifact, out: Path, **config: Any) -> tuple[PassOutput, Artifact]:
    out.mkdir()
    result = OvWeightInt8Pass(OvWeightInt8Config(**config)).run(parent, ctx, out)
    return result, Artifact(step_folder="w8", format=Format.OPENVINO, key="w8", path=out / result.file,
                            meta=result.meta)


@pytest.fixture(scope="module")
def weight_int8(ctx: PassContext, ir: Artifact, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[PassOutput, Artifact]:
    """The pass run outside a recipe (no gate): the first group size, 64."""
    return _run(ctx, ir, tmp_path_factory.mktemp("w8") / "out")


def _gate(passing: set[int]) -> Gate:
    """A gate that passes the builds whose group size is in ``passing``."""
    import openvino as ov

    def gate(path: Path, precision: str) -> GateResult:
        size = int(runtime_options(ov.Core().read_model(str(path)))[GROUP_OPTION])
        ok = precision == "int8" and size in passing
        return GateResult(ok, [] if ok else [f"group {size} fails"], 0.999 if ok else 0.98 + size / 1e4, 0.0)

    return gate


def test_matmul_weights_are_int8_and_the_ir_carries_its_group_size(
        ctx: PassContext, ir: Artifact, weight_int8: tuple[PassOutput, Artifact]) -> None:
    import openvino as ov

    result, artifact = weight_int8
    assert artifact.path is not None
    model = ov.Core().read_model(str(artifact.path))
    assert compressed_matmuls(model) and len(compressed_matmuls(model)) == result.stats["matmuls_compressed"] == 12
    assert result.stats["matmuls_float"] == 0 and result.stats["group_size"] == 64
    assert result.meta == {"precision": "int8", "runtime_options": {GROUP_OPTION: "64"}, "weights": "int8_asym"}
    assert runtime_options(model) == {GROUP_OPTION: "64"} and not result.warnings
    assert int(openvino_model(artifact.path).get_property(GROUP_OPTION)) == 64  # applied without being asked for
    runner = Runner(ctx.model)
    for batch, seq in [(1, 9), (3, 77)]:
        inputs = ctx.sample_inputs(batch, seq)
        got = runner.open(artifact)(inputs)["last_hidden_state"]
        want = runner.open(ir)(inputs)["last_hidden_state"]
        assert got.shape == (batch, seq, 32) and np.isfinite(got).all()
        assert compare(want, got, inputs["attention_mask"])["cos_min"] > 0.99


def test_a_sentence_gives_the_same_row_alone_and_in_a_padded_batch(
        ctx: PassContext, weight_int8: tuple[PassOutput, Artifact]) -> None:
    sentences = load_sentences()[:16]
    batch = tokenize(ctx.model.tokenizer, sentences, NAMES, seq=128)
    alone = tokenize(ctx.model.tokenizer, [sentences[5]], NAMES)
    run = Runner(ctx.model).open(weight_int8[1])
    seq = alone["input_ids"].shape[1]
    in_batch = run(batch)["last_hidden_state"][5:6, :seq]
    assert compare(run(alone)["last_hidden_state"], in_batch, alone["attention_mask"])["cos_min"] >= 0.999


def test_the_fastest_passing_group_size_is_kept(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    result, artifact = _run(dataclasses.replace(ctx, gate=_gate({64, 32})), ir, tmp_path / "both")
    by_size = result.stats["choice"]["by_size"]
    assert set(by_size) == {"64", "32"} and all(row["passed"] for row in by_size.values())
    fastest = min(by_size, key=lambda size: by_size[size]["p50_ms"])
    assert result.stats["group_size"] == int(fastest) and result.meta["runtime_options"] == {GROUP_OPTION: fastest}
    assert all(row["p50_ms"] > 0 and row["calls"] >= 50 for row in by_size.values())
    assert result.stats["choice"]["timed_at"]["batch"] == 1 and result.stats["choice"]["timed_at"]["seq"] == 128


def test_a_group_size_that_fails_the_gate_is_not_kept(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    result, _ = _run(dataclasses.replace(ctx, gate=_gate({32})), ir, tmp_path / "one")
    assert result.stats["group_size"] == 32 and result.meta["runtime_options"] == {GROUP_OPTION: "32"}
    by_size = result.stats["choice"]["by_size"]
    assert not by_size["64"]["passed"] and "p50_ms" not in by_size["32"]  # nothing to choose between: not timed

    result, _ = _run(dataclasses.replace(ctx, gate=_gate(set())), ir, tmp_path / "none")
    assert result.stats["group_size"] == 64 and result.stats["choice"]["passed"] is False  # the closest
    assert "repair: true" in result.warnings[0]


def test_repair_keeps_matmul_weights_in_float_until_the_gate_passes(ctx: PassContext, ir: Artifact,
                                                                   tmp_path: Path) -> None:
    import openvino as ov

    def gate(path: Path, precision: str) -> GateResult:  # passes once one MatMul keeps float weights
        floats = 12 - len(compressed_matmuls(ov.Core().read_model(str(path))))
        return GateResult(floats >= 1, [] if floats else ["all int8"], 0.98 + floats / 100, 0.0)

    result, artifact = _run(dataclasses.replace(ctx, gate=gate), ir, tmp_path / "repaired", repair=True,
                            group_sizes=[32])
    repair = result.stats["repair"]
    assert repair["passed"] and len(repair["kept_in_float"]) == 1 and not result.warnings
    assert result.stats["matmuls_float"] == 1 and result.stats["matmuls_compressed"] == 11
    assert result.meta["runtime_options"] == {GROUP_OPTION: "32"}


def test_it_reads_only_an_fp32_ir(ctx: PassContext, ir: Artifact, tmp_path: Path) -> None:
    half = dataclasses.replace(ir, meta={"precision": "fp16"})
    with pytest.raises(ValueError, match="reads an fp32 OpenVINO IR"):
        _run(ctx, half, tmp_path / "out")


def test_group_sizes_must_be_positive_and_distinct() -> None:
    assert OvWeightInt8Config().group_sizes == [64, 32]
    for bad in ([], [0], [32, 32]):
        with pytest.raises(ValueError):
            OvWeightInt8Config(group_sizes=bad)
    assert OvWeightInt8Pass(OvWeightInt8Config()).uses_gate
    assert not OvWeightInt8Pass(OvWeightInt8Config(group_sizes=[64])).uses_gate
