"""matmul_nbits: weight-only block quantization with onnxruntime's MatMulNBits contrib op.

Each MatMul with a constant 2-D weight becomes ``com.microsoft::MatMulNBits``: the weight is stored in
4 or 8 bits, one scale (and, asymmetric, one zero point) per block of ``block_size`` values along K,
rounded to nearest (onnxruntime's default block quantizer, ``DefaultWeightOnlyQuantConfig``; its "RTN"
config needs Intel Neural Compressor). With ``accuracy_level`` 4 the CPU kernel computes in int8: it
quantizes the activations per block of each row at run time, so a row's output does not depend on its
batch-mates, unlike int8_dynamic, whose activation scale spans the whole batch.

onnxsim turns MatMul + Add into Gemm, which the quantizer skips: read the unsimplified export
(``from: onnx_export``) or the fused graph (``from: ort_optimize``, whose Attention stays fp32).

The artifact's precision is "int8" for either bit width (the gate's tolerance presets are fp32, fp16
and int8); ``meta.weight_bits`` says which.

On all-MiniLM-L6-v2's fused graph, min per-token cosine to eager: 8 bits, blocks of 32, symmetric 0.99887,
asymmetric 0.99891 (so symmetric is the default: no zero points to store), blocks of 64 0.99803,
accuracy_level 1 (fp32 compute) 0.99966; the unfused export 0.99842; 4 bits 0.921 symmetric, 0.936
asymmetric (``symmetric: false`` pays off at 4 bits). A row alone and in a padded batch gave the same
output to the bit at every setting (int8_dynamic: cosine 0.953).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field, field_validator

from passes._support.node_selection import select_nodes
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
from passes.repair.strategies import ForwardSelection
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import PassContext, PassOutput

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

log = logging.getLogger(__name__)


class MatMulNBitsConfig(RepairOptions):
    """Options of onnxruntime's MatMulNBitsQuantizer (round to nearest, per block)."""

    bits: Literal[4, 8] = Field(default=8, description="Bits per weight: 8 (close to fp32) or 4 (half the size, "
                                                       "far less accurate).")
    block_size: int = Field(default=32, description="Weights per scale along K: a power of two, 16 to 256.")
    symmetric: bool = Field(default=True, description="No zero points; at 8 bits as accurate as asymmetric.")
    accuracy_level: int = Field(default=4, ge=0, le=4, description="MatMulNBits' compute type on CPU: 4 = int8 "
                                "(activations quantized per block of each row), 1 = fp32, 0 = the kernel's default.")
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="MatMuls left in float: names or globs ('*layer.*[0-9]/output/dense/MatMul')."
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value > 256 or value & (value - 1):
            raise ValueError(f"block_size must be a power of two from 16 to 256, not {value}")
        return value


READ_INSTEAD = "quantize the unsimplified export or the fused graph (`from: onnx_export` or `from: ort_optimize`)"


def weight_nodes_of(model: onnx.ModelProto, op_type: str) -> dict[str, str]:
    """Nodes of ``op_type`` whose second input is a 2-D initializer (for MatMul: what the quantizer
    converts). Name -> op type."""
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    return {node.name: node.op_type for node in model.graph.node
            if node.op_type == op_type and len(node.input) > 1 and weights.get(node.input[1]) == 2}


def no_candidates_message(model: onnx.ModelProto, step: str) -> str:
    """Why ``model`` has nothing to quantize, and which parent to read instead."""
    gemms = sum(node.op_type == "Gemm" for node in model.graph.node)
    held = f" (it holds {gemms} Gemm, which MatMulNBits does not take: onnxsim turns MatMul + Add into Gemm)" \
        if gemms else ""
    return f"matmul_nbits: {step} has no MatMul with a constant 2-D weight{held}; {READ_INSTEAD}"


@dataclass(frozen=True)
class NBitsQuantize:
    """onnxruntime's MatMulNBitsQuantizer on one model, with nodes kept in float as asked: a module-level
    class, so that a repair can run its builds in worker processes."""

    model_path: Path
    config: MatMulNBitsConfig
    excluded: tuple[str, ...]
    external: bool

    def __call__(self, target: Path, kept: list[str]) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        config = self.config
        level = config.accuracy_level or None  # 0: the attribute is left out
        algo = DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                            accuracy_level=level, bits=config.bits)
        quantizer = MatMulNBitsQuantizer(load_model(self.model_path), bits=config.bits, block_size=config.block_size,
                                         is_symmetric=config.symmetric, accuracy_level=level,
                                         nodes_to_exclude=[*self.excluded, *kept], algo_config=algo)
        quantizer.process()
        save_model(quantizer.model.model, target, self.external)


def nbits_counts(model: onnx.ModelProto, candidates: dict[str, str]) -> dict[str, int]:
    """MatMuls that became MatMulNBits, and weight MatMuls that stayed float."""
    ops = {node.name: node.op_type for node in model.graph.node}
    return {"matmul_nbits": sum(op == "MatMulNBits" for op in ops.values()),
            "float_matmuls": sum(ops.get(name) == "MatMul" for name in candidates)}


class MatMulNBitsPass(RepairingPass):
    """Quantize an fp32 ONNX model's MatMul weights to 8 (or 4) bits per block, as MatMulNBits."""

    name = "matmul_nbits"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = MatMulNBitsConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the block-quantized model to ``out_dir/model.onnx``."""
        config = cast(MatMulNBitsConfig, self.config)
        parent_path = model_file(parent, "matmul_nbits", fp32=True)
        source = load_model(parent_path, with_data=False)
        found = weight_nodes_of(source, "MatMul")
        if not found:
            raise ValueError(no_candidates_message(source, parent.step_folder))
        excluded = select_nodes(source, config.nodes_to_exclude, "nodes_to_exclude")
        candidates = {name: op for name, op in found.items() if name not in excluded}
        external = has_external_data(source) or weight_bytes(source) >= EXTERNAL_THRESHOLD
        convert = NBitsQuantize(parent_path, config, tuple(excluded), external)
        repaired, warnings = convert_with_repair(ctx, parent_path, out_dir, "int8", convert, candidates, config,
                                                 ForwardSelection(), parallel=True)
        out = out_dir / "model.onnx"
        stats = _stats(source, load_model(out, with_data=False), found, len(excluded))
        stats.update(repaired, bytes_before=files_bytes(parent_path), bytes_after=files_bytes(out))
        log.info("matmul_nbits: %d MatMuls to %d-bit MatMulNBits, %d MatMuls and %d Gemms left in float; "
                 "%d -> %d bytes", stats["matmul_nbits"], config.bits, stats["float_matmuls"], stats["float_gemms"],
                 stats["bytes_before"], stats["bytes_after"])
        if not stats["matmul_nbits"]:
            warnings.append("nothing was quantized (check nodes_to_exclude)")
        if stats["float_gemms"]:
            warnings.append(f"{stats['float_gemms']} Gemm with a weight stay float (MatMulNBits takes MatMuls "
                            f"only); {READ_INSTEAD}")
        meta = {"precision": Precision.INT8, "weight_bits": config.bits, "block_size": config.block_size}
        return PassOutput(file=out.name, meta=meta, stats=stats, warnings=warnings)


def _stats(source: onnx.ModelProto, model: onnx.ModelProto, found: dict[str, str], excluded: int) -> dict[str, Any]:
    """Counts for the manifest: quantized and float MatMuls, Gemms (never quantized), excluded nodes, nodes."""
    return {**nbits_counts(model, found), "float_gemms": len(weight_nodes_of(model, "Gemm")),
            "excluded_nodes": excluded, "nodes_before": len(source.graph.node), "nodes_after": len(model.graph.node)}
