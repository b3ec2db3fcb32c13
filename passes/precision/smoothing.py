"""Make a float model easier to quantize dynamically, without changing what it computes.

Dynamic int8 quantizes each activation tensor with one scale, so a few input channels with a
large range leave the other channels a handful of levels (the feed-forward output MatMul of
all-MiniLM-L6-v2 sees one channel near 25 while most stay under 2). Two exact rewrites of a
node's input, measured on calibration sentences:

- smooth (SmoothQuant), for nodes fed by a normalization or by attention: input channel ``j`` is divided by
  ``s_j = range_j**alpha / max|W_j|**(1 - alpha)`` and weight row ``j`` multiplied by it, moving
  range from the activations to the weights, which are quantized per output column;
- split, for the other MatMuls (fed by an activation function): the ``k`` widest
  input channels go through a small float MatMul beside the quantized one, and are zeroed in its
  input.

On all-MiniLM-L6-v2 (min per-token cosine to eager over the verification cases, every MatMul and
Attention int8, the embedding left in float): plain per-channel int8 0.91; smoothing every node
0.94; smoothing all but the feed-forward output MatMuls and splitting one channel off those 0.98.
Smoothing the feed-forward output MatMul, whose input comes from GELU, made it worse: its
outliers are a few channels, not a spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from passes.repair.localize import run_exposed_batches, token_rows
from pipeline.engine.pass_api import Inputs

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

# Producers whose outputs have outliers spread over channels (SmoothQuant's case); the inputs of
# other nodes (after GELU) have a few very wide channels, which are split off instead.
SMOOTHED_AFTER = frozenset({"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
                            "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
                            "Attention", "MultiHeadAttention"})
REWRITABLE = frozenset({"MatMul", "Attention"})  # ops that quantize input[0] whole against the weight input[1]


@dataclass
class NodePlan:
    """The rewrite of one node's input: divisors per input channel (ones when not smoothed) and the
    input channels split off into float."""

    node: str
    divisors: np.ndarray
    split: list[int]

    @property
    def smoothed(self) -> bool:
        """Whether the input is divided by SmoothQuant scales."""
        return bool((self.divisors != 1).any())


def smoothing_scales(ranges: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel divisors, kept within [1e-3, 1e3]."""
    rows = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    return np.clip(np.maximum(ranges, 1e-5) ** alpha / rows ** (1 - alpha), 1e-3, 1e3)


def candidates(model: onnx.ModelProto, nodes: set[str]) -> dict[str, onnx.NodeProto]:
    """Of ``nodes``, those a rewrite is exact for: a 2-D weight initializer that no other node reads."""
    weights = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return {node.name: node for node in model.graph.node
            if node.name in nodes and node.op_type in REWRITABLE and len(node.input) > 1
            and node.input[1] in weights and len(weights[node.input[1]].dims) == 2 and readers[node.input[1]] == 1}


def input_ranges(path: Path, batches: list[Inputs], nodes: dict[str, onnx.NodeProto]) -> dict[str, np.ndarray]:
    """Largest magnitude of each input channel of each node over ``batches`` (positions the mask keeps)."""
    ranges: dict[str, np.ndarray] = {}
    exposed = run_exposed_batches(path, batches, {node.input[0] for node in nodes.values()}, untyped_as_float=True)
    for batch, values in zip(batches, exposed, strict=True):
        for name, node in nodes.items():
            rows = token_rows(values[node.input[0]], batch.get("attention_mask"))
            peak = np.abs(rows).max(axis=0) if rows.size else np.zeros(rows.shape[1], dtype=np.float32)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


def plan(path: Path, batches: list[Inputs], nodes: set[str], alpha: float, split: int) -> list[NodePlan]:
    """The rewrite of every candidate among ``nodes``: smoothing when a normalization or attention
    feeds it, else ``split`` channels off a MatMul."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    chosen = candidates(model, nodes)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    weights = {t.name: t for t in model.graph.initializer}
    ranges = input_ranges(path, batches, chosen)
    plans = []
    for name, node in chosen.items():
        weight = numpy_helper.to_array(weights[node.input[1]])
        if ranges[name].shape[0] != weight.shape[0]:
            continue
        ones = np.ones(weight.shape[0], dtype=np.float64)
        if producers.get(node.input[0]) in SMOOTHED_AFTER:
            if alpha > 0:
                plans.append(NodePlan(name, smoothing_scales(ranges[name], weight, alpha), []))
        elif node.op_type == "MatMul" and split > 0:
            plans.append(NodePlan(name, ones, sorted(int(i) for i in np.argsort(ranges[name])[::-1][:split])))
    return plans


def float_part_name(node: str) -> str:
    """Name of the float MatMul that carries a node's split-off channels (never to be quantized)."""
    return f"{node}/outlier_channels/MatMul"


def rewrite(model: onnx.ModelProto, plans: list[NodePlan]) -> onnx.ModelProto:
    """A copy of ``model`` with each plan applied; every original tensor keeps its name and value.

    The node's input is multiplied by ``1 / divisors`` (0 on split channels) and its weight rows by
    ``divisors``; split channels are gathered into a float MatMul whose result is added back.
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_node = {p.node: p for p in plans}
    weights = {t.name: t for t in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        p = by_node.get(node.name)
        if p is None:
            nodes.append(node)
            continue
        x, weight = node.input[0], numpy_helper.to_array(weights[node.input[1]])
        multiplier = (1 / p.divisors).astype(np.float32)
        multiplier[p.split] = 0
        weights[node.input[1]].CopyFrom(
            numpy_helper.from_array((weight * p.divisors[:, None]).astype(weight.dtype), node.input[1]))
        prefix = f"{node.name}/smoothing"
        out.graph.initializer.append(numpy_helper.from_array(multiplier, f"{prefix}/multiplier"))
        nodes.append(helper.make_node("Mul", [x, f"{prefix}/multiplier"], [f"{prefix}/input"], name=f"{prefix}/Mul"))
        node.input[0] = f"{prefix}/input"
        if not p.split:
            nodes.append(node)
            continue
        result, part = node.output[0], float_part_name(node.name)
        out.graph.initializer.extend([
            numpy_helper.from_array(np.asarray(p.split, dtype=np.int64), f"{part}/channels"),
            numpy_helper.from_array(weight[p.split], f"{part}/weight")])
        node.output[0] = f"{prefix}/quantized_part"
        nodes.extend([
            helper.make_node("Gather", [x, f"{part}/channels"], [f"{part}/input"], name=f"{part}/Gather", axis=-1),
            helper.make_node("MatMul", [f"{part}/input", f"{part}/weight"], [f"{part}/output"], name=part),
            node,
            helper.make_node("Add", [f"{prefix}/quantized_part", f"{part}/output"], [result], name=f"{prefix}/Add")])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def summary(plans: list[NodePlan]) -> dict[str, Any]:
    """What the rewrite did, for the pass's statistics."""
    return {"smoothed": sorted(p.node for p in plans if p.smoothed),
            "split": {p.node: len(p.split) for p in plans if p.split}}
