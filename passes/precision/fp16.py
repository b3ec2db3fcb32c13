"""fp16: convert an fp32 ONNX model's weights and arithmetic to float16.

Uses the converter that ships inside onnxruntime (onnxruntime.transformers.float16), so no extra
dependency is needed. Ops in its default block list, and those named here, stay in float32 with
Cast nodes around them. On CPUs without native fp16 this is slower than fp32; it is meant for GPUs.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydantic import Field

from passes._support.onnx_io import (
    EXTERNAL_THRESHOLD,
    files_bytes,
    has_external_data,
    load_model,
    model_file,
    save_model,
    weight_bytes,
)
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.strategies import LocalizedGrowth
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import PassContext, PassOutput

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

log = logging.getLogger(__name__)

FP16_MIN_POSITIVE = 5.96e-08  # smallest positive (subnormal) float16
FP16_MAX = 65504.0


class Fp16Config(RepairOptions):
    """Options of onnxruntime.transformers.float16.convert_float_to_float16."""

    keep_io_types: bool = Field(default=True, description="Keep float32 graph inputs and outputs (Casts inside).")
    op_block_list: list[str] = Field(
        default_factory=list, description="Op types kept in float32, added to the converter's default list."
    )
    node_block_list: list[str] = Field(default_factory=list, description="Node names kept in float32.")
    min_positive_val: float = Field(
        default=FP16_MIN_POSITIVE, ge=FP16_MIN_POSITIVE,
        description="Weights smaller in magnitude than this are clamped to it (not flushed to 0).",
    )
    max_finite_val: float = Field(
        default=FP16_MAX, gt=0, le=FP16_MAX, description="Weights larger in magnitude are clamped to this."
    )
    force_fp16_initializers: bool = Field(
        default=False, description="Convert every float initializer, even those feeding float32 nodes."
    )


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each tensor: declared ones, then propagated through nodes in graph order.

    A node whose output type is not declared (a contrib op, say) is taken to produce the type of
    its first float input; a Cast produces its ``to`` type.
    """
    from onnx import TensorProto

    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    for node in graph.node:
        if node.op_type == "Cast":
            guess = next((a.i for a in node.attribute if a.name == "to"), None)
        else:
            guess = next((types[i] for i in node.input if types.get(i) in floats), None)
        for name in node.output:
            if not types.get(name) and guess is not None:
                types[name] = guess
    return types


def precision_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes computing in float16 and in float32 (Casts counted apart), for the stats."""
    from onnx import TensorProto

    types = tensor_types(model)
    counts = {"fp16_nodes": 0, "fp32_nodes": 0, "cast_nodes": 0}
    for node in model.graph.node:
        if node.op_type == "Cast":
            counts["cast_nodes"] += 1
            continue
        seen = {types.get(name) for name in [*node.input, *node.output]}
        if TensorProto.FLOAT16 in seen:
            counts["fp16_nodes"] += 1
        elif TensorProto.FLOAT in seen:
            counts["fp32_nodes"] += 1
    return counts


def shape_inferred(path: Path) -> onnx.ModelProto:
    """The model at ``path`` with inferred types, its weights loaded; works past 2 GB.

    Inference runs file to file in a temporary folder, so nothing is written beside the parent.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    with tempfile.TemporaryDirectory(prefix="fp16-") as scratch:
        inferred = Path(scratch) / "inferred.onnx"
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred))
        model = onnx.load(str(inferred), load_external_data=False)
    load_external_data_for_model(model, str(Path(path).parent))
    return model


def convert(path: Path, config: Fp16Config, kept: list[str] | None = None,
            kept_ops: set[str] | None = None) -> onnx.ModelProto:
    """The model at ``path`` converted to float16 as ``config`` says; ``kept`` nodes and every node
    of ``kept_ops`` stay float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(
        shape_inferred(path),
        min_positive_val=config.min_positive_val,
        max_finite_val=config.max_finite_val,
        keep_io_types=config.keep_io_types,
        disable_shape_infer=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list) | (kept_ops or set())),
        node_block_list=[*config.node_block_list, *(kept or [])],
        force_fp16_initializers=config.force_fp16_initializers,
    )
    # the Casts kept input and output types need are appended after the nodes that read them;
    # onnxruntime runs that, but onnx.checker (and other runtimes) want the graph in order
    OnnxModel.graph_topological_sort(converted.graph)
    return converted


class Fp16Pass(RepairingPass):
    """Convert an fp32 ONNX model to float16."""

    name = "fp16"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = Fp16Config

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the float16 model to ``out_dir/model.onnx``."""
        config = cast(Fp16Config, self.config)
        parent_path = model_file(parent, "fp16", fp32=True)
        source = load_model(parent_path, with_data=False)
        names = {node.name for node in source.graph.node}
        unknown = [name for name in config.node_block_list if name not in names]
        if unknown:
            raise ValueError(f"node_block_list: the model has no node named {unknown[0]!r}")
        external = has_external_data(source)

        op_of = {node.name: node.op_type for node in source.graph.node}

        def build(target: Path, kept: list[str]) -> None:
            # The error a node adds in fp16 is usually its op type's (its range or its accumulation),
            # so a repair blocks the op types of the nodes it keeps, not only the nodes.
            converted = convert(parent_path, config, kept, {op_of[name] for name in kept if name in op_of})
            save_model(converted, target, external or weight_bytes(converted) >= EXTERNAL_THRESHOLD)

        blockable = {node.name: node.op_type for node in source.graph.node
                     if node.op_type not in ("Cast", "Constant", "Shape") and node.name not in config.node_block_list}
        repaired, warnings = convert_with_repair(ctx, parent_path, out_dir, "fp16", build, blockable, config,
                                                 LocalizedGrowth())
        out = out_dir / "model.onnx"
        model = load_model(out, with_data=False)
        stats = {**repaired, **precision_counts(model), "nodes_before": len(source.graph.node),
                 "nodes_after": len(model.graph.node), "bytes_before": files_bytes(parent_path),
                 "bytes_after": files_bytes(out)}
        log.info("fp16: %d nodes in float16, %d in float32, %d Casts; %d -> %d bytes", stats["fp16_nodes"],
                 stats["fp32_nodes"], stats["cast_nodes"], stats["bytes_before"], stats["bytes_after"])
        return PassOutput(file=out.name, meta={"precision": Precision.FP16, "keep_io_types": config.keep_io_types},
                          stats=stats, warnings=warnings)
