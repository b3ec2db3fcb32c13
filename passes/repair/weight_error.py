"""Which MatMuls lose the most to reduced-precision weights, each on its own: the error of a MatMul's output
when only its weights are rounded to the grid, on the activations the fp32 model computes for real inputs.

The weights are rounded to the nearest point of the grid NNCF's data-free compression uses (per output
channel, or per group of input channels; asymmetric: 2^bits levels between the group's minimum and maximum;
symmetric: a scale of the group's largest magnitude over 2^(bits-1)). The error is measured on the fp32
parent, one inference on the probes for every candidate at once, so a ranking costs no build. It ranks the
builds' own conversions (AWQ, scale estimation) by the same measure as the plain one: a proxy for them, and
the repair's gate judges what each build really does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from passes.repair.localize_ir import plain
from pipeline.model.inputs import Inputs
from pipeline.runtime.sessions import OPENVINO_CONFIG

Row = dict[str, Any]


@dataclass(frozen=True)
class Grid:
    """A weight grid: bits, symmetric or not, and input channels per scale (-1: one scale per output channel)."""

    bits: int
    symmetric: bool
    group: int = -1


def rounded(weight: np.ndarray, grid: Grid) -> np.ndarray:
    """``weight`` (output x input channels) rounded to ``grid`` and scaled back (one scale per output channel
    where the group size does not divide the input channels)."""
    out, inner = weight.shape
    group = inner if grid.group < 1 or inner % grid.group else grid.group
    blocks = weight.reshape(out, inner // group, group).astype(np.float64)
    if grid.symmetric:
        low = 2 ** (grid.bits - 1)
        scale = np.abs(blocks).max(axis=-1, keepdims=True) / low
        scale = np.where(scale == 0, 1.0, scale)
        back = np.clip(np.round(blocks / scale), -low, low - 1) * scale
    else:
        top = 2 ** grid.bits - 1
        least, most = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
        scale = np.where(most > least, (most - least) / top, 1.0)
        zero = np.clip(np.round(-least / scale), 0, top)
        back = (np.clip(np.round(blocks / scale) + zero, 0, top) - zero) * scale
    return back.reshape(out, inner).astype(np.float32)


def float_weight(op: Any) -> np.ndarray | None:
    """A MatMul's constant weight as output x input channels, or None when it is not a 2-D float constant
    (or the activation is transposed)."""
    attributes = op.get_attributes()
    node = op.input(1).get_source_output().get_node()
    if node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant" or attributes.get("transpose_a"):
        return None
    data = np.asarray(node.get_data(), dtype=np.float32)
    if data.ndim != 2:
        return None
    return data if attributes.get("transpose_b") else data.T


def activations(model: Any, ports: dict[str, Any], probes: list[Inputs]) -> dict[str, np.ndarray]:
    """The value of each of ``ports`` (an output of one of ``model``'s operations, by name) on every probe,
    flattened to rows of its last axis and concatenated over the probes."""
    import openvino as ov

    added = model.add_outputs(list(ports.values()))  # a port added twice is one output
    index = {name: list(model.outputs).index(port) for name, port in zip(ports, added, strict=True)}
    compiled = ov.Core().compile_model(model, "CPU", dict(OPENVINO_CONFIG))
    request = compiled.create_infer_request()
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ports}
    for probe in probes:
        result = request.infer({port: np.ascontiguousarray(probe[fed_name(port, probe)])
                                for port in compiled.inputs})
        for name, position in index.items():
            value = np.asarray(result[position], dtype=np.float32)
            rows[name].append(value.reshape(-1, value.shape[-1]))
    return {name: np.concatenate(values) for name, values in rows.items()}


def fed_name(port: Any, probe: Inputs) -> str:
    """The name, of a model input's names, that ``probe`` holds a value for."""
    return next((name for name in sorted(port.get_names()) if name in probe), port.get_any_name())


def rank_by_weight_error(parent: Path, probes: list[Inputs], candidates: dict[str, str], grid: Grid) -> list[Row]:
    """The candidates (name -> op type) as rows ("node", "op_type", and of the MatMul's output with its weights on
    ``grid`` against fp32, on the probes: "cos_min" over rows, "sqnr_db"), most harmful first (lowest min cosine,
    which the gate judges); a candidate whose weight is not a plain 2-D constant is ranked last."""
    import openvino as ov

    model = ov.Core().read_model(str(parent))
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_friendly_name() in candidates}
    weights = {name: weight for name, op in ops.items() if (weight := float_weight(op)) is not None}
    inputs = activations(model, {name: ops[name].input(0).get_source_output() for name in weights}, probes)
    rows = [{"node": name, "op_type": candidates[name], **output_error(inputs[name], weight, grid)}
            for name, weight in weights.items()]
    rows.sort(key=lambda row: (row["cos_min"], row["sqnr_db"]))
    lost = [{"node": name, "op_type": op_type, "cos_min": None, "sqnr_db": None}
            for name, op_type in candidates.items() if name not in weights]
    return [{**row, "cos_min": round(row["cos_min"], 6), "sqnr_db": plain(row["sqnr_db"])} for row in rows] + lost


def output_error(x: np.ndarray, weight: np.ndarray, grid: Grid) -> dict[str, float]:
    """Of ``x @ weight.T`` with the weight on ``grid`` against the exact product: the smallest cosine over rows
    and the SQNR in dB."""
    exact = (x @ weight.T).astype(np.float64)
    noise = (x @ (weight - rounded(weight, grid)).T).astype(np.float64)
    approx = exact - noise
    norms = np.linalg.norm(exact, axis=-1) * np.linalg.norm(approx, axis=-1)
    cosines = np.where(norms > 0, (exact * approx).sum(axis=-1) / np.where(norms > 0, norms, 1.0), 1.0)
    power = float(np.square(noise).sum())
    db = 10 * math.log10(max(float(np.square(exact).sum()), 1e-30) / power) if power > 0 else math.inf
    return {"cos_min": float(cosines.min()), "sqnr_db": db}
