"""matmul_nbits on the tiny random Llama: each algorithm's MatMulNBits run at a batch and past length other
than the export's; the output projection and the input embedding as the config says; the repair sending the
nodes it keeps to 8 bits (or float), driven by a gate that fails until some are kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxruntime import InferenceSession
from pydantic import ValidationError

from passes.precision import matmul_nbits
from passes.precision.matmul_nbits import MatMulNBitsConfig, MatMulNBitsPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import GateResult, PassContext, PassOutput
from pipeline.engine.postconditions import check_onnx
from pipeline.runtime.runner import run_onnx
from pipeline.verify.metrics import compare

LM_HEAD = "/model/lm_head/MatMul"
EMBEDDING = "/model/model/embed_tokens/Gather"
BODY_MATMULS = 14  # 2 layers x (q, k, v, o, gate, up, down)
LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 2, 2, 16, 30522
# min logits cosine to the fp32 export on this random model, the worse of (3 x 1, past 21) and (1 x 5, no past),
# measured: 8 bits rtn 0.99993; 4 bits, blocks of 32: rtn 0.9888, k_quant 0.9905, hqq 0.9912; rtn blocks of 64 0.9871
MIN_COSINE = {8: 0.999, 4: 0.975}


def _quantize(parent: Artifact, ctx: PassContext, out: Path, **config: object) -> tuple[PassOutput, Path]:
    out.mkdir()
    output = MatMulNBitsPass(MatMulNBitsConfig(**config)).run(parent, ctx, out)
    return output, out / output.file


def _decode_step(batch: int, seq: int, past: int) -> dict[str, np.ndarray]:
    """Random tokens after a random cache of ``past`` positions; the second row left-padded by 2."""
    rng = np.random.default_rng(past)
    mask = np.ones((batch, past + seq), dtype=np.int64)
    mask[1:2, :2] = 0
    cache = {f"past_key_values.{i}.{kind}": rng.standard_normal((batch, KV_HEADS, past, HEAD_DIM)).astype(np.float32)
             for i in range(LAYERS) for kind in ("key", "value")}
    return {"input_ids": rng.integers(1000, VOCAB, (batch, seq)), "attention_mask": mask, **cache}


def _logits_cosine(parent: Path, path: Path, inputs: dict[str, np.ndarray]) -> float:
    want, got = run_onnx(parent, inputs)["logits"], run_onnx(path, inputs)["logits"]
    assert got.shape == want.shape
    return compare(want, got, inputs["attention_mask"][:, -got.shape[1]:])["cos_min"]


def _by_type(path: Path, op_type: str) -> dict[str, dict[str, int]]:
    """Nodes of ``op_type``: name -> integer attributes."""
    model = onnx.load(str(path), load_external_data=False)
    return {n.name: {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
            for n in model.graph.node if n.op_type == op_type}


@pytest.mark.parametrize(("algorithm", "bits", "block"), [("rtn", 8, 32), ("rtn", 4, 64), ("k_quant", 4, 32),
                                                          ("hqq", 4, 32)])
def test_each_algorithm_runs_at_other_batches_and_past_lengths(llama_onnx: Artifact, llama_ctx: PassContext,
                                                               tmp_path: Path, algorithm: str, bits: int,
                                                               block: int) -> None:
    symmetric = {"symmetric": False} if algorithm != "rtn" else {}
    output, path = _quantize(llama_onnx, llama_ctx, tmp_path / "q", algorithm=algorithm, bits=bits,
                             block_size=block, **symmetric)
    assert output.meta == {"precision": f"int{bits}", "weight_bits": bits, "block_size": block}
    check_onnx(path, llama_ctx.io)  # what the engine checks after every step
    nodes = _by_type(path, "MatMulNBits")
    assert len(nodes) == BODY_MATMULS + 1 and output.stats["float_matmuls"] == 0
    assert {(a["bits"], a["block_size"], a["accuracy_level"]) for a in nodes.values()} == {(bits, block, 4)}
    assert output.stats["lm_head"] == LM_HEAD and output.stats["embedding"] == EMBEDDING
    assert output.stats["weight_nodes"]["float"] == [EMBEDDING]  # embedding: false by default
    assert len(output.stats["weight_nodes"][str(bits)]) == BODY_MATMULS + 1
    for batch, seq, past in [(3, 1, 21), (1, 5, 0)]:
        assert _logits_cosine(llama_onnx.path, path, _decode_step(batch, seq, past)) > MIN_COSINE[bits]


def test_lm_head_stays_float_and_the_embedding_is_quantized_as_asked(llama_onnx: Artifact, llama_ctx: PassContext,
                                                                     tmp_path: Path) -> None:
    output, path = _quantize(llama_onnx, llama_ctx, tmp_path / "q", bits=4, symmetric=False, lm_head=False,
                             embedding=True)
    assert output.meta["precision"] == "int4"
    check_onnx(path, llama_ctx.io)
    model = onnx.load(str(path))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert ops[LM_HEAD] == "MatMul" and EMBEDDING not in ops
    gathers = _by_type(path, "GatherBlockQuantized")
    assert gathers == {f"{EMBEDDING}_Q4": {"bits": 4, "block_size": 32, "gather_axis": 0, "quantize_axis": 1}}
    assert "model.model.embed_tokens.weight" not in {t.name for t in model.graph.initializer}
    groups = output.stats["weight_nodes"]
    assert groups["float"] == [LM_HEAD] and EMBEDDING in groups["4"] and not groups["8"]
    assert output.stats["matmul_nbits"] == BODY_MATMULS and output.stats["float_matmuls"] == 1
    assert output.stats["bytes_after"] < 0.6 * output.stats["bytes_before"]  # the float lm_head: 7.8 of 9.2 MB
    assert _logits_cosine(llama_onnx.path, path, _decode_step(3, 1, 21)) > MIN_COSINE[4]


@pytest.mark.parametrize(("bits", "symmetric", "columns", "block"), [(4, True, 64, 16), (4, False, 72, 16),
                                                                     (8, True, 144, 32), (8, False, 40, 32)])
def test_an_embedding_table_reads_back_through_gather_block_quantized(bits: int, symmetric: bool, columns: int,
                                                                      block: int) -> None:
    """onnxruntime's GatherBlockQuantized reads the packed table as written, a partial last block included."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(bits).standard_normal((50, columns)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="lookup")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", columns])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    matmul_nbits.quantize_embedding(model, "lookup", bits, block, symmetric)
    onnx.checker.check_model(model)
    ids = np.array([[0, 7, 49], [3, 3, 12]])
    got = InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    step = np.abs(table).max() / (2 ** (bits - 1) - 1)  # the coarsest grid a block may have
    assert got.shape == (2, 3, columns) and np.abs(got - table[ids]).max() <= step


def _small_probe(ctx: PassContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repair probes of 2 sentences instead of 16: localising the error over a 30,522-word vocabulary on 16 rows
    takes most of a repair's time, and these tests are about where the kept nodes go."""
    calibration = ctx.calibration_inputs
    monkeypatch.setattr(ctx, "calibration_inputs", lambda path, count, batch: calibration(path, count, min(batch, 2)))


class FailsUntil8Bit:
    """A gate that fails until the build holds an 8-bit node (or, with ``in_float``, a float body MatMul)."""

    def __init__(self, in_float: bool = False) -> None:
        self.in_float, self.precisions = in_float, set()

    def __call__(self, path: Path, precision: str) -> GateResult:
        self.precisions.add(precision)
        model = onnx.load(str(path), load_external_data=False)
        if self.in_float:
            back = sum(n.op_type == "MatMul" and n.name.endswith("proj/MatMul") for n in model.graph.node)
        else:
            back = sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") and
                       any(a.name == "bits" and a.i == 8 for a in n.attribute) for n in model.graph.node)
        return GateResult(passed=back > 0, failures=[] if back else ["min_cosine"], cos_min=0.9 + 0.01 * back,
                          max_abs=1.0)


@pytest.mark.parametrize("ranked", [False, True])
def test_repair_to_8_sends_the_kept_nodes_to_8_bits(llama_onnx: Artifact, llama_ctx: PassContext, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, ranked: bool) -> None:
    if ranked:  # the localised order, as for a decoder with many MatMuls
        monkeypatch.setattr(matmul_nbits, "FORWARD_SELECTION_MAX", 0)
    gate = FailsUntil8Bit()
    monkeypatch.setattr(llama_ctx, "gate", gate)
    _small_probe(llama_ctx, monkeypatch)
    output, path = _quantize(llama_onnx, llama_ctx, tmp_path / "q", bits=4, symmetric=False, repair=True,
                             embedding=True)
    assert gate.precisions == {"int4"} and not output.warnings
    repaired = output.stats["repaired"]
    assert repaired["to"] == 8 and len(repaired["nodes"]) >= 1
    assert output.stats["repair"]["passed"]
    groups = output.stats["weight_nodes"]
    assert sorted(groups["8"]) == sorted(repaired["nodes"]) and groups["float"] == []
    assert len(groups["4"]) == BODY_MATMULS + 2 - len(repaired["nodes"])
    widths = {**_by_type(path, "MatMulNBits"), **_by_type(path, "GatherBlockQuantized")}
    assert {name: a["bits"] for name, a in widths.items() if a["bits"] == 8} == \
        {f"{name}_Q8": 8 for name in repaired["nodes"]}
    assert output.stats["matmul_nbits_8bit"] == sum(name != EMBEDDING for name in repaired["nodes"])
    assert _logits_cosine(llama_onnx.path, path, _decode_step(3, 1, 21)) > MIN_COSINE[4]


def test_repair_to_float_keeps_them_in_float(llama_onnx: Artifact, llama_ctx: PassContext, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_ctx, "gate", FailsUntil8Bit(in_float=True))
    _small_probe(llama_ctx, monkeypatch)
    output, path = _quantize(llama_onnx, llama_ctx, tmp_path / "q", bits=4, symmetric=False, repair=True,
                             repair_to="float", nodes_to_exclude=[LM_HEAD])
    repaired = output.stats["repaired"]
    assert repaired["to"] == "float" and repaired["nodes"]
    assert sorted(output.stats["weight_nodes"]["float"]) == sorted([LM_HEAD, EMBEDDING, *repaired["nodes"]])
    assert not output.stats["weight_nodes"]["8"] and output.stats["matmul_nbits_8bit"] == 0
    assert all(a["bits"] == 4 for a in _by_type(path, "MatMulNBits").values())


def _tied(path: Path) -> Artifact:
    """Embedding lookup, one MatMul, and an output projection reading the same table transposed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((100, 32)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "weight")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["h"], name="embed"),
             helper.make_node("MatMul", ["h", "weight"], ["h2"], name="body/MatMul"),
             helper.make_node("Transpose", ["table"], ["table_t"], name="tie", perm=[1, 0]),
             helper.make_node("MatMul", ["h2", "table_t"], ["logits"], name="head/MatMul")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 100])],
                              [table, weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Artifact(step_folder="01_onnx_export", format=Format.ONNX, key="t", path=path, meta={"precision": "fp32"})


def test_a_table_shared_with_the_output_projection_stays_float(llama_ctx: PassContext, tmp_path: Path) -> None:
    output, path = _quantize(_tied(tmp_path / "tied.onnx"), llama_ctx, tmp_path / "q", bits=4, embedding=True)
    assert output.stats["embedding"] == "embed" and output.stats["lm_head"] is None  # its weight is no constant
    assert output.stats["weight_nodes"] == {"4": ["body/MatMul"], "8": [], "float": ["embed"]}
    assert any("also read by 'tie'" in w for w in output.warnings)
    run_onnx(path, {"input_ids": np.array([[1, 2, 3, 99]])})


def test_the_output_projection_is_found_through_a_bias_and_a_cast(tiny_onnx: Artifact) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 10), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"), helper.make_node("Add", ["y", "b"], ["z"]),
             helper.make_node("Cast", ["z"], ["logits"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [weight, bias])
    assert matmul_nbits.output_projection(helper.make_model(graph)) == "proj"
    bert = onnx.load(str(tiny_onnx.path), load_external_data=False)
    assert matmul_nbits.output_projection(bert) is None  # last_hidden_state comes out of a LayerNormalization


@pytest.mark.parametrize("bad", [{"algorithm": "k_quant", "symmetric": True}, {"algorithm": "gptq"},
                                 {"algorithm": "hqq", "bits": 8, "symmetric": False},
                                 {"bits": 8, "repair_to": 8}, {"repair_to": 4}, {"lm_head": "8"}])
def test_inconsistent_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MatMulNBitsConfig(**bad)
