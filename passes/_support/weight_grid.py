"""The block grid a weight already lies on, and MatMulNBits nodes that hold it exactly.

A model read from a GGUF file was dequantized from llama.cpp's blocks of 32 values along each row (along K of
the ONNX MatMul weight, as MatMulNBits' blocks run):

- ``sym4`` (Q4_0): ``d * (q - 8)``, q in 0..15; the value of largest magnitude is ``-8 d``;
- ``asym4`` (Q4_1): ``d * q + m``, q in 0..15; m is the block's minimum, ``15 d + m`` its maximum;
- ``sym8`` (Q8_0): ``d * q``, q in -127..127; the value of largest magnitude is ``127 |d|``.

Quantizing such a weight again (round to nearest, or any search) adds a second error on top of the file's:
storing the grid itself adds none. Symmetric grids are MatMulNBits' own symmetric form (zero point 8 or 128).
An asymmetric grid's float minimum is not: its codes are stored with zero points 0 and the minimum comes back
through a block-sum term, ``sum over blocks b of (sum of x over b) * m[b]``: a Reshape and ReduceSum of the
input (onnxruntime merges the ones of a shared input) and a MatMul with the minima, [K / block, N] in fp32.
A grid is accepted only when every block rebuilds the weight to within ``RELATIVE_TOLERANCE`` of the block's
largest magnitude (fp32 rounding of the stored scale and minimum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

GridKind = Literal["sym4", "asym4", "sym8"]
BLOCK = 32  # llama.cpp's block of Q4_0, Q4_1 and Q8_0
RELATIVE_TOLERANCE = 1e-6
SHAPE_END_OPSET = 15


@dataclass(frozen=True)
class BlockGrid:
    """A weight [K, N] as ``scales * (codes - zero) + minima`` per block along K: codes [N, K / block, block]
    (uint8, unpacked), scales and minima [N, K / block] (minima only for ``asym4``)."""

    kind: GridKind
    bits: int
    codes: np.ndarray
    scales: np.ndarray
    minima: np.ndarray | None

    def widened(self) -> BlockGrid:
        """The same grid in 8-bit codes, for a model stored at 8 bits throughout."""
        if self.bits == 8:
            return self
        codes = self.codes if self.minima is not None else self.codes + np.uint8(128 - 8)  # zero point 8 -> 128
        return BlockGrid(self.kind, 8, codes, self.scales, self.minima)


def find_grid(weight: np.ndarray, block: int) -> BlockGrid | None:
    """The grid ``weight`` (K x N, float) lies on in blocks of ``block`` along K, or None when it lies on none."""
    rows, columns = weight.shape
    if rows % block or not rows:
        return None
    values = weight.T.reshape(columns, rows // block, block).astype(np.float64)
    for fit in (_symmetric4, _asymmetric4, _symmetric8):
        grid = fit(values)
        if _rebuilds(grid, values):
            return grid
    return None


def _safe(scale: np.ndarray) -> np.ndarray:
    return np.where(scale == 0, 1.0, scale)[..., None]


def _largest(values: np.ndarray) -> np.ndarray:
    """Each block's value of largest magnitude, with its sign."""
    return np.take_along_axis(values, np.abs(values).argmax(axis=-1)[..., None], axis=-1)[..., 0]


def _symmetric4(values: np.ndarray) -> BlockGrid:
    scale = _largest(values) / -8
    codes = np.clip(np.round(values / _safe(scale)) + 8, 0, 15)
    return BlockGrid("sym4", 4, codes.astype(np.uint8), scale.astype(np.float32), None)


def _asymmetric4(values: np.ndarray) -> BlockGrid:
    low = values.min(axis=-1)
    scale = (values.max(axis=-1) - low) / 15
    codes = np.clip(np.round((values - low[..., None]) / _safe(scale)), 0, 15)
    return BlockGrid("asym4", 4, codes.astype(np.uint8), scale.astype(np.float32), low.astype(np.float32))


def _symmetric8(values: np.ndarray) -> BlockGrid:
    scale = np.abs(values).max(axis=-1) / 127
    codes = np.clip(np.round(values / _safe(scale)) + 128, 1, 255)
    return BlockGrid("sym8", 8, codes.astype(np.uint8), scale.astype(np.float32), None)


def pack_codes(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values of ``bits`` bits packed along the last axis, low-order first (as is at 8 bits)."""
    if bits == 8:
        return values
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def rebuild(grid: BlockGrid) -> np.ndarray:
    """The weight the grid stands for, [N, K / block, block] in float64."""
    zero = 0 if grid.minima is not None else 2 ** (grid.bits - 1)
    values = grid.scales[..., None].astype(np.float64) * (grid.codes.astype(np.float64) - zero)
    return values if grid.minima is None else values + grid.minima[..., None]


def _rebuilds(grid: BlockGrid, values: np.ndarray) -> bool:
    error = np.abs(rebuild(grid) - values).max(axis=-1)
    return bool((error <= RELATIVE_TOLERANCE * np.abs(values).max(axis=-1)).all())


def grid_matmul(node: onnx.NodeProto, grid: BlockGrid, accuracy_level: int
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers that compute MatMul ``node`` (input x [..., K], weight on ``grid``) exactly:
    a MatMulNBits named ``<node>_Q<bits>`` and, for an asymmetric grid, the block-sum term."""
    from onnx import helper, numpy_helper

    columns, blocks, block = grid.codes.shape
    name, bits = node.name, grid.bits
    data = numpy_helper.from_array(pack_codes(grid.codes, bits), f"{name}_grid_codes")
    scales = numpy_helper.from_array(grid.scales.reshape(-1), f"{name}_grid_scales")
    tensors, inputs = [data, scales], [node.input[0], data.name, scales.name]
    if grid.minima is not None:  # zero points 0: the codes alone, the minima through the block-sum term
        zeros = np.zeros((columns, -(-blocks * bits // 8)), np.uint8).reshape(-1)
        tensors.append(numpy_helper.from_array(zeros, f"{name}_grid_zero_points"))
        inputs.append(tensors[-1].name)
    product = f"{name}_grid_product" if grid.minima is not None else node.output[0]
    nodes = [helper.make_node("MatMulNBits", inputs, [product], name=f"{name}_Q{bits}", domain="com.microsoft",
                              K=blocks * block, N=columns, bits=bits, block_size=block,
                              accuracy_level=accuracy_level)]
    if grid.minima is None:
        return nodes, tensors
    shape = numpy_helper.from_array(np.array([blocks, block], np.int64), f"{name}_grid_block_shape")
    axis = numpy_helper.from_array(np.array([-1], np.int64), f"{name}_grid_axis")
    minima = numpy_helper.from_array(np.ascontiguousarray(grid.minima.T), f"{name}_grid_minima")
    tensors += [shape, axis, minima]
    nodes += _block_sum_term(node, name, product, shape.name, axis.name, minima.name)
    return nodes, tensors


def _block_sum_term(node: onnx.NodeProto, name: str, product: str, shape: str, axis: str, minima: str
                    ) -> list[onnx.NodeProto]:
    """output = product + (x summed per block) @ minima, with x's leading axes kept (Shape's ``end``:
    opset 15 or later)."""
    from onnx import helper

    x = node.input[0]
    leading = [helper.make_node("Shape", [x], [f"{name}_grid_x_shape"], name=f"{name}_grid_x_shape", end=-1),
               helper.make_node("Concat", [f"{name}_grid_x_shape", shape], [f"{name}_grid_shape"],
                                name=f"{name}_grid_shape", axis=0)]
    return [*leading,
            helper.make_node("Reshape", [x, f"{name}_grid_shape"], [f"{name}_grid_blocks"], name=f"{name}_grid_blocks"),
            helper.make_node("ReduceSum", [f"{name}_grid_blocks", axis], [f"{name}_grid_sums"],
                             name=f"{name}_grid_sums", keepdims=0),
            helper.make_node("MatMul", [f"{name}_grid_sums", minima], [f"{name}_grid_offset"],
                             name=f"{name}_grid_offset"),
            helper.make_node("Add", [product, f"{name}_grid_offset"], list(node.output), name=f"{name}_grid_sum")]


def place_grids(model: onnx.ModelProto, names: list[str], bits: int, accuracy_level: int) -> list[str]:
    """Store each MatMul of ``names`` whose weight lies on a grid as that grid, in place: at its own width
    (4 or 8) when ``bits`` is 4, widened to 8 when ``bits`` is 8. Returns the MatMuls so stored; the others
    are left as they were."""
    from onnx import numpy_helper

    graph, wanted = model.graph, set(names)
    tables = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    placed, rebuilt = [], []
    for node in graph.node:
        weight = tables.get(node.input[1]) if node.name in wanted and len(node.input) > 1 else None
        grid = None if weight is None else find_grid(numpy_helper.to_array(weight), BLOCK)
        if grid is None:
            rebuilt.append(node)
            continue
        grid = grid.widened() if bits == 8 else grid
        if grid.minima is not None and _opset(model) < SHAPE_END_OPSET:
            raise ValueError(f"matmul_nbits: algorithm grid: {node.name}'s weight lies on an asymmetric grid, "
                             f"whose block-sum term needs opset {SHAPE_END_OPSET} or later (the model has "
                             f"{_opset(model)}); export at opset {SHAPE_END_OPSET} or later")
        nodes, tensors = grid_matmul(node, grid, accuracy_level)
        rebuilt.extend(nodes)
        graph.initializer.extend(tensors)
        if readers[node.input[1]] == 1:
            graph.initializer.remove(weight)
        placed.append(node.name)
    del graph.node[:]
    graph.node.extend(rebuilt)
    return placed


def grid_offsets(model: onnx.ModelProto) -> set[str]:
    """The block-sum MatMuls ``grid_matmul`` added (weight MatMuls that are not the model's own)."""
    return {node.name for node in model.graph.node if node.op_type == "MatMul" and node.name.endswith("_grid_offset")}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
