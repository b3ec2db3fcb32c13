"""Which nodes of an ONNX graph a precision pass touches: by name or glob, by weight, and as
onnxruntime's quantizer names them."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx


def select_nodes(model: onnx.ModelProto, patterns: list[str], option: str) -> list[str]:
    """Names of the nodes that ``patterns`` name, exactly or as fnmatch globs ('*layer.*[0-9]/output/dense/MatMul').

    Raises ValueError naming the first pattern that matches no node (a typo would otherwise do nothing).
    """
    names = [node.name for node in model.graph.node]
    present = set(names)
    selected: list[str] = []
    for pattern in patterns:
        matched = [pattern] if pattern in present else fnmatch.filter(names, pattern)
        if not matched:
            raise ValueError(f"{option}: the model has no node named {pattern!r}")
        selected.extend(name for name in matched if name not in selected)
    return selected


def weight_nodes(model: onnx.ModelProto, op_types: set[str]) -> dict[str, str]:
    """Nodes of ``op_types`` that read a weight (an initializer): what quantization converts. Name -> op type."""
    weights = {t.name for t in model.graph.initializer}
    return {node.name: node.op_type for node in model.graph.node
            if node.op_type in op_types and any(i in weights for i in node.input)}


def gemm_names(model: onnx.ModelProto) -> frozenset[str]:
    """The names of the model's Gemm nodes (see ``exclusion_names``)."""
    return frozenset(node.name for node in model.graph.node if node.op_type == "Gemm")


def exclusion_names(gemms: frozenset[str], names: list[str]) -> list[str]:
    """Names to give onnxruntime's quantizer for nodes to keep in float, given the model's ``gemms``.

    The quantizer splits a Gemm into '<name>_MatMul' and '<name>_Add' before it looks at the
    exclusion list, so a Gemm is excluded under its MatMul's name too.
    """
    return [alias for name in names for alias in ((name, f"{name}_MatMul") if name in gemms else (name,))]
