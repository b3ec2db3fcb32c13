"""The weighted layers of an OpenVINO IR and the precision their weights are stored in: the input embedding
tables (Gathers of a constant table), the output projection (the MatMul that makes ``logits``) and the
MatMuls of the body, and, through NNCF's decompression (Convert, Subtract, Multiply, Reshape), the element
type of the constant each weight is read from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOGITS = "logits"
DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")
PRECISIONS = {"u4": "int4", "i4": "int4", "u8": "int8", "i8": "int8", "f32": "float", "f16": "float",
              "bf16": "float"}
FLOAT_TYPES = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class Layers:
    """Friendly names of an fp32 IR's weighted layers."""

    embeddings: list[str]
    lm_head: str | None
    body: list[str]


def weight_source(op: Any) -> Any | None:
    """The constant an operation's weight is read from (a MatMul's second input, a Gather's table), through
    the decompression NNCF puts in front of it; None when the input is computed from the model's inputs, or
    is a constant of fewer than two axes (a scale, a shape)."""
    node = op.input(1 if op.get_type_name() == "MatMul" else 0).get_source_output().get_node()
    while node.get_type_name() in DECOMPRESSION:
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant" or len(node.get_output_partial_shape(0)) < 2:
        return None
    return node


def element_type(constant: Any) -> str:
    """'f32', 'u4', 'i8', ...: the element type of a constant."""
    return str(constant.get_element_type().get_type_name())


def find_layers(model: Any) -> Layers:
    """The embedding tables, the output projection (None when no output is named ``logits``) and the other
    MatMuls with constant weights."""
    embeddings, matmuls = [], []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Gather", "MatMul"):
            continue
        source = weight_source(op)
        if source is None or element_type(source) not in FLOAT_TYPES:
            continue
        if kind == "MatMul":
            matmuls.append(op.get_friendly_name())
        else:
            embeddings.append(op.get_friendly_name())
    head = output_projection(model)
    return Layers(embeddings, head, [name for name in matmuls if name != head])


def output_projection(model: Any) -> str | None:
    """The MatMul nearest the ``logits`` output, up its first inputs."""
    for port in model.outputs:
        if LOGITS not in port.get_names():
            continue
        node = port.get_node()
        for _ in range(8):
            if node.get_type_name() == "MatMul":
                return str(node.get_friendly_name())
            if not node.inputs():
                break
            node = node.input(0).get_source_output().get_node()
    return None


def matmul_precisions(model: Any) -> dict[str, str]:
    """Each MatMul with a constant weight: 'int4', 'int8' or 'float', as its weight is stored."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul" and (source := weight_source(op)) is not None:
            found[op.get_friendly_name()] = PRECISIONS.get(element_type(source), element_type(source))
    return found


def weight_precisions(model: Any, names: list[str]) -> dict[str, str]:
    """The named operations' weights: 'int4', 'int8' or 'float'."""
    wanted = set(names)
    return {op.get_friendly_name(): PRECISIONS.get(element_type(source), element_type(source))
            for op in model.get_ordered_ops()
            if op.get_friendly_name() in wanted and (source := weight_source(op)) is not None}


def constant_types(model: Any) -> dict[str, int]:
    """How many MatMul and Gather weights are read from constants of each element type."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("MatMul", "Gather") and (source := weight_source(op)) is not None:
            counts[element_type(source)] = counts.get(element_type(source), 0) + 1
    return counts
