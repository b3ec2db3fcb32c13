"""int8_dynamic: onnxruntime's dynamic quantization (int8 weights, activations quantized at run time).

No calibration data is needed. Works on a plain export and on an ort_optimize'd model: a fused
model's contrib-op outputs carry no type information, so ``DefaultTensorType`` (float) is always
passed, without which onnxruntime cannot quantize the MatMuls that follow them.

On AVX2 CPUs without VNNI (u8 x s8 products may saturate), per_channel with reduce_range is the
more accurate choice: on all-MiniLM-L6-v2 the min per-token cosine to fp32 is 0.82 with the
defaults, 0.95 with both, 0.97 with both and the feed-forward output MatMuls left in float.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field, field_validator

from passes._support.node_selection import exclusion_names, gemm_names, select_nodes, weight_nodes
from passes._support.onnx_io import (
    EXTERNAL_THRESHOLD,
    files_bytes,
    has_external_data,
    load_model,
    model_file,
    op_counts,
    save_model,
    weight_bytes,
)
from passes._support.sentences import check_sentence_file
from passes.precision import smoothing
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.strategies import ForwardSelection
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.core.store import sha256_file
from pipeline.engine.pass_api import PassContext, PassOutput

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    pass

log = logging.getLogger(__name__)
SMOOTHING_BATCHES, SMOOTHING_BATCH = 8, 16  # 128 calibration sentences measure the input ranges

# Operators that dynamic quantization writes; their count says how much was quantized.
QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                 "QAttention", "QEmbedLayerNormalization", "ConvInteger", "DynamicQuantizeLSTM", "QGemm",
                 "DequantizeLinear")


class Int8DynamicConfig(RepairOptions):
    """Options of onnxruntime.quantization.quantize_dynamic."""

    per_channel: bool = Field(default=False, description="One scale per output channel of each weight.")
    reduce_range: bool = Field(
        default=False, description="7-bit weights: avoids u8 x s8 saturation on CPUs without VNNI."
    )
    weight_type: Literal["qint8", "quint8"] = Field(default="qint8", description="Type of quantized weights.")
    op_types: list[str] = Field(
        default_factory=list,
        description="Op types to quantize; empty = all onnxruntime supports (MatMul, Attention, Gather, ...).",
    )
    smooth: bool = Field(
        default=False, description="Before quantizing, rewrite node inputs measured on calibration sentences: "
        "SmoothQuant scales where a normalization or attention feeds the node, the widest channels split off "
        "into float elsewhere (passes/precision/smoothing.py). Exact in float; it changes only what quantization "
        "loses.")
    smooth_alpha: float = Field(default=0.7, ge=0, le=1, description="SmoothQuant's migration strength; 0 = none.")
    outlier_channels: int = Field(default=1, ge=0, le=64, description="Input channels split off into float per "
                                  "MatMul fed by neither a normalization nor attention; 0 = none.")
    calibration: str | None = Field(default=None, description="Sentence file the smoothing measures activations on "
                                    "(default: the bundled corpus).")
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="Nodes left in float: names or globs ('*layer.*[0-9]/output/dense/MatMul')."
    )

    @field_validator("op_types")
    @classmethod
    def _supported_ops(cls, value: list[str]) -> list[str]:
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        unknown = [op for op in value if op not in IntegerOpsRegistry]
        if unknown:
            raise ValueError(f"op_types: {unknown[0]!r} cannot be quantized dynamically "
                             f"(known: {', '.join(sorted(IntegerOpsRegistry))})")
        return value


class Int8DynamicPass(RepairingPass):
    """Quantize an fp32 ONNX model's weights to int8, activations at run time."""

    name = "int8_dynamic"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = Int8DynamicConfig

    def check(self, ctx: PassContext) -> None:
        """The smoothing's sentence file must exist and hold sentences."""
        config = cast(Int8DynamicConfig, self.config)
        if not config.smooth:
            return
        check_sentence_file(ctx, config.calibration, "int8_dynamic.calibration")

    def data_digest(self, ctx: PassContext) -> str | None:
        """sha256 of the sentences the smoothing measures on, when it runs."""
        config = cast(Int8DynamicConfig, self.config)
        return sha256_file(ctx.sentence_file(config.calibration)) if config.smooth else None

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the dynamically quantized model to ``out_dir/model.onnx``."""
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        config = cast(Int8DynamicConfig, self.config)
        parent_path = model_file(parent, "int8_dynamic", fp32=True)
        source = load_model(parent_path, with_data=False)
        excluded = select_nodes(source, config.nodes_to_exclude, "nodes_to_exclude")
        ops = set(config.op_types or IntegerOpsRegistry) | ({"Gemm"} if not config.op_types else set())
        candidates = {name: op for name, op in weight_nodes(source, ops).items() if name not in excluded}
        with tempfile.TemporaryDirectory(prefix="smoothing-") as scratch:
            model_path, plans = parent_path, list[smoothing.NodePlan]()
            if config.smooth:
                model_path, plans = _smoothed(parent_path, ctx, config, set(candidates), Path(scratch))
            float_parts = [smoothing.float_part_name(p.node) for p in plans if p.split]
            stats, warnings = _quantize(model_path, ctx, config, [*excluded, *float_parts], candidates, out_dir)
        stats.update(excluded_nodes=len(excluded), bytes_before=files_bytes(parent_path))
        if config.smooth:
            stats["smoothing"] = smoothing.summary(plans)
        return PassOutput(file="model.onnx", meta={"precision": Precision.INT8, "weight_type": config.weight_type},
                          stats=stats, warnings=warnings)


def _smoothed(parent: Path, ctx: PassContext, config: Int8DynamicConfig, nodes: set[str],
              scratch: Path) -> tuple[Path, list[smoothing.NodePlan]]:
    """The parent rewritten for quantization (passes/precision/smoothing.py), saved in ``scratch``, and the plans."""
    batches = ctx.calibration_inputs(ctx.sentence_file(config.calibration), SMOOTHING_BATCHES, SMOOTHING_BATCH)
    plans = smoothing.plan(parent, batches, nodes, config.smooth_alpha, config.outlier_channels)
    model = smoothing.rewrite(load_model(parent), plans)
    target = scratch / "smoothed.onnx"
    save_model(model, target, external=has_external_data(model) or weight_bytes(model) >= EXTERNAL_THRESHOLD)
    done = smoothing.summary(plans)
    log.info("int8_dynamic: smoothed %d node inputs, split %d channels off into float",
             len(done["smoothed"]), sum(done["split"].values()))
    return target, plans


@dataclass(frozen=True)
class DynamicQuantize:
    """onnxruntime's quantize_dynamic of one model with a config's options, nodes kept in float as
    asked: a module-level class, so that a repair can run its builds in worker processes."""

    model_path: Path
    config: Int8DynamicConfig
    excluded: tuple[str, ...]
    gemms: frozenset[str]
    external: bool

    def __call__(self, target: Path, kept: list[str]) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        config = self.config
        with tempfile.TemporaryDirectory(prefix="int8-dynamic-") as scratch:
            quantize_dynamic(
                self._own_source(Path(scratch)), target,
                op_types_to_quantize=config.op_types or None,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=QuantType.QInt8 if config.weight_type == "qint8" else QuantType.QUInt8,
                nodes_to_exclude=exclusion_names(self.gemms, [*self.excluded, *kept]) or None,
                use_external_data_format=self.external,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )

    def _own_source(self, folder: Path) -> Path:
        """The model to read, as links in ``folder``: quantize_dynamic writes '<model>-inferred.onnx'
        beside the model it reads, which builds running at once would share (and which would land
        in the parent's folder)."""
        for path in self.model_path.parent.iterdir():
            if path.is_file():
                (folder / path.name).symlink_to(path.resolve())
        return folder / self.model_path.name


def _quantize(model_path: Path, ctx: PassContext, config: Int8DynamicConfig, excluded: list[str],
              candidates: dict[str, str], out_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Quantize ``model_path`` into ``out_dir/model.onnx`` (repairing when asked); (stats, warnings)."""
    source = load_model(model_path, with_data=False)
    out = out_dir / "model.onnx"
    external = has_external_data(source) or weight_bytes(source) >= EXTERNAL_THRESHOLD
    convert = DynamicQuantize(model_path, config, tuple(excluded), gemm_names(source), external)
    repaired, repair_warnings = convert_with_repair(ctx, model_path, out_dir, "int8", convert, candidates, config,
                                                    ForwardSelection(), parallel=True)
    model = load_model(out, with_data=False)
    stats = {**repaired, "quantized_ops": op_counts(model, QUANTIZED_OPS),
             "float_matmuls": sum(node.op_type == "MatMul" for node in model.graph.node),
             "nodes_before": len(source.graph.node), "nodes_after": len(model.graph.node),
             "bytes_after": files_bytes(out)}
    log.info("int8_dynamic: quantized %s, %d MatMuls left in float; %d bytes", stats["quantized_ops"],
             stats["float_matmuls"], stats["bytes_after"])
    warnings = repair_warnings + ([] if stats["quantized_ops"] else
                                  ["nothing was quantized (check op_types and nodes_to_exclude)"])
    return stats, warnings
