"""matmul_nbits' ``grid`` algorithm on the tiny random Llama with its weights put on llama.cpp's grids (Q4_0,
Q4_1, Q8_0 blocks of 32): each grid is found and stored exactly, a weight on no grid is quantized by rtn and
named, and round to nearest on the same weights is far from exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from passes._support.weight_grid import RELATIVE_TOLERANCE, find_grid, rebuild
from passes.precision.matmul_nbits import MatMulNBitsConfig, MatMulNBitsPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import PassContext, PassOutput
from pipeline.engine.postconditions import check_onnx
from pipeline.runtime.runner import run_onnx

LM_HEAD = "/model/lm_head/MatMul"
LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 2, 2, 16, 30522
KINDS = ("sym4", "asym4", "sym8")
# max abs logits difference to the parent whose weights lie on the grids, measured at accuracy_level 1 (fp32
# compute): grid 1.0e-5 (4 and 8 bits); rtn at 4 bits, asymmetric, on the same weights 6.8
MAX_ABS_EXACT = 1e-4
MIN_ABS_RTN = 0.1


def _on_grid(kind: str, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``weight``'s shape (K x N) with values on ``kind``'s grid, in blocks of 32 along K, as llama.cpp stores."""
    rows, columns = weight.shape
    blocks = (columns, rows // 32, 32)
    scale = rng.uniform(0.001, 0.01, blocks[:2])[..., None].astype(np.float16).astype(np.float32)
    if kind == "sym4":
        values = scale * (rng.integers(0, 16, blocks) - 8)
        values[..., 0] = -8 * scale[..., 0]  # the value of largest magnitude is -8 d
    elif kind == "asym4":
        low = rng.uniform(-0.08, 0.0, blocks[:2])[..., None].astype(np.float16).astype(np.float32)
        codes = rng.integers(0, 16, blocks)
        codes[..., 0], codes[..., 1] = 0, 15  # the minimum and maximum: llama.cpp's d = (max - min) / 15
        values = scale * codes + low
    else:
        values = scale * rng.integers(-127, 128, blocks)
        values[..., 0] = 127 * scale[..., 0]
    return values.astype(np.float32).reshape(columns, rows).T.copy()


def _gridded(parent: Artifact, path: Path, off_grid: str | None = None) -> tuple[Artifact, dict[str, str]]:
    """``parent`` with each weight MatMul's weight on a grid (cycling through KINDS), but ``off_grid``'s."""
    model = onnx.load(str(parent.path))
    tables = {t.name: t for t in model.graph.initializer}
    rng, kinds = np.random.default_rng(0), {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in tables and len(tables[node.input[1]].dims) == 2:
            table = tables[node.input[1]]
            weight = numpy_helper.to_array(table)
            if node.name != off_grid:
                kinds[node.name] = KINDS[len(kinds) % len(KINDS)]
                weight = _on_grid(kinds[node.name], weight, rng)
            table.CopyFrom(numpy_helper.from_array(weight, table.name))
    onnx.save(model, str(path))
    return Artifact(step_folder="01_onnx_export", format=Format.ONNX, key="grid", path=path,
                    meta={"precision": "fp32"}), kinds


def _quantize(parent: Artifact, ctx: PassContext, out: Path, **config: object) -> tuple[PassOutput, Path]:
    out.mkdir()
    output = MatMulNBitsPass(MatMulNBitsConfig(**config)).run(parent, ctx, out)
    return output, out / output.file


def _decode_step(batch: int, seq: int, past: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(past)
    mask = np.ones((batch, past + seq), dtype=np.int64)
    mask[-1, :2] = 0
    cache = {f"past_key_values.{i}.{kind}": rng.standard_normal((batch, KV_HEADS, past, HEAD_DIM)).astype(np.float32)
             for i in range(LAYERS) for kind in ("key", "value")}
    return {"input_ids": rng.integers(1000, VOCAB, (batch, seq)), "attention_mask": mask, **cache}


def _max_abs(parent: Path, path: Path) -> float:
    worst = 0.0
    for batch, seq, past in [(3, 1, 21), (2, 5, 0)]:
        inputs = _decode_step(batch, seq, past)
        want, got = run_onnx(parent, inputs)["logits"], run_onnx(path, inputs)["logits"]
        kept = inputs["attention_mask"][:, -seq:].astype(bool)
        worst = max(worst, float(np.abs(want - got)[kept].max()))
    return worst


@pytest.mark.parametrize("kind", KINDS)
def test_each_grid_is_found_and_rebuilds_the_weight(kind: str) -> None:
    weight = _on_grid(kind, np.zeros((64, 48), np.float32), np.random.default_rng(1))
    grid = find_grid(weight, 32)
    assert grid is not None and grid.kind == kind
    rebuilt = rebuild(grid).reshape(48, 64).T
    assert np.abs(rebuilt - weight).max() <= RELATIVE_TOLERANCE * np.abs(weight).max()
    nudged = weight.copy()
    nudged[5, 7] += 1e-3 * np.abs(weight).max()
    assert find_grid(nudged, 32) is None
    assert find_grid(np.random.default_rng(2).standard_normal((64, 48)).astype(np.float32), 32) is None
    assert find_grid(weight[:48], 32) is None  # K not a whole number of blocks


@pytest.mark.parametrize("bits", [4, 8])
def test_weights_on_grids_are_stored_exactly(llama_onnx: Artifact, llama_ctx: PassContext, tmp_path: Path,
                                            bits: int) -> None:
    parent, kinds = _gridded(llama_onnx, tmp_path / "grid.onnx")
    output, path = _quantize(parent, llama_ctx, tmp_path / "q", algorithm="grid", bits=bits, accuracy_level=1)
    check_onnx(path, llama_ctx.io)
    assert output.stats["grid"] == {"exact": len(kinds), "asymmetric": list(kinds.values()).count("asym4"),
                                    "requantized": []}
    widths = {name: 8 if bits == 8 or kind == "sym8" else 4 for name, kind in kinds.items()}
    assert sorted(output.stats["weight_nodes"]["8"]) == sorted(n for n, w in widths.items() if w == 8)
    assert sorted(output.stats["weight_nodes"]["4"]) == sorted(n for n, w in widths.items() if w == 4)
    assert _max_abs(parent.path, path) < MAX_ABS_EXACT
    if bits == 8:
        assert any("accuracy_level 1" in w for w in output.warnings)  # 8-bit weights computed in fp32 run slowly


def test_round_to_nearest_on_the_same_weights_is_not_exact(llama_onnx: Artifact, llama_ctx: PassContext,
                                                          tmp_path: Path) -> None:
    parent, _ = _gridded(llama_onnx, tmp_path / "grid.onnx")
    _, path = _quantize(parent, llama_ctx, tmp_path / "q", algorithm="rtn", bits=4, symmetric=False,
                        accuracy_level=1, lm_head=False)
    assert _max_abs(parent.path, path) > MIN_ABS_RTN


def test_a_weight_on_no_grid_is_quantized_by_rtn_and_named(llama_onnx: Artifact, llama_ctx: PassContext,
                                                           tmp_path: Path) -> None:
    parent, kinds = _gridded(llama_onnx, tmp_path / "grid.onnx", off_grid=LM_HEAD)
    output, path = _quantize(parent, llama_ctx, tmp_path / "q", algorithm="grid", bits=4, accuracy_level=1)
    assert output.stats["grid"]["requantized"] == [LM_HEAD]
    assert output.stats["grid"]["exact"] == len(kinds)
    assert LM_HEAD in output.stats["weight_nodes"]["4"]
    assert any("lie on no grid" in w and LM_HEAD in w for w in output.warnings)
    run_onnx(path, _decode_step(1, 1, 3))
