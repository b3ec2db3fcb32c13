"""int8_static: onnxruntime's static quantization, calibrated on real sentences.

Steps, in this order for these reasons:
1. quant_pre_process (symbolic shape inference): without it a fused model's contrib-op outputs
   carry no type, and the MatMuls they feed are silently left in float. It is tried with
   auto_merge (dynamic axes need it), then with ONNX shape inference only, then skipped.
2. Calibration batches are padded to one common length: onnxruntime's histogram calibrators
   (entropy, percentile, distribution) stack all batches and fail on varied sequence lengths.
3. quantize_static. By default only MatMul and Gather are quantized: onnxruntime's full list also
   takes the attention-mask arithmetic (Where over -inf), whose infinite range breaks the
   histogram calibrators and gains nothing.

Accuracy on all-MiniLM-L6-v2 (min per-token cosine to fp32, real padded sentences): 0.60 with the
defaults; the feed-forward output MatMuls (fed by GELU, whose range is wide) cause most of it, and
leaving them in float (nodes_to_exclude: ['*layer.*[0-9]/output/dense/MatMul']) gives 0.93.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from pydantic import Field, model_validator

from passes._support.node_selection import exclusion_names, gemm_names, select_nodes, weight_nodes
from passes._support.onnx_io import (
    EXTERNAL_THRESHOLD,
    files_bytes,
    has_external_data,
    load_model,
    model_file,
    op_counts,
    weight_bytes,
)
from passes._support.sentences import check_sentence_file
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.strategies import LocalizedGrowth
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.core.errors import described
from pipeline.core.store import canonical_json, sha256_file, sha256_text
from pipeline.engine.pass_api import PassContext, PassOutput
from pipeline.model.inputs import Inputs

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

log = logging.getLogger(__name__)

QuantName = Literal["qint8", "quint8"]
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "QLinearAdd",
                 "QLinearMul", "QGemm", "QAttention", "QEmbedLayerNormalization")


class Int8StaticConfig(RepairOptions):
    """Options of onnxruntime.quantization.quantize_static and of its calibration data."""

    calibration: str | None = Field(
        default=None, description="Sentence file, one per line (default: the corpus shipped with the project)."
    )
    samples: int = Field(default=64, ge=1, description="Sentences to calibrate on.")
    batch: int = Field(default=8, ge=1, description="Sentences per calibration batch.")
    method: Literal["minmax", "entropy", "percentile", "distribution"] = Field(
        default="minmax", description="How activation ranges are chosen from the calibration outputs."
    )
    quant_format: Literal["qdq", "qoperator"] = Field(
        default="qdq", description="qdq: Quantize/DequantizeLinear pairs (preferred on CPU); qoperator: QLinear* ops."
    )
    per_channel: bool = Field(default=False, description="One scale per output channel of each weight.")
    reduce_range: bool = Field(
        default=False, description="7-bit weights: avoids u8 x s8 saturation on x86 CPUs without VNNI."
    )
    activation_type: QuantName = Field(default="qint8", description="Type of quantized activations.")
    weight_type: QuantName = Field(default="qint8", description="Type of quantized weights.")
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul", "Gather"],
        description="Op types to quantize; empty = all onnxruntime supports (also the attention-mask ops).",
    )
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="Nodes left in float: names or globs ('*layer.*[0-9]/output/dense/MatMul')."
    )
    preprocess: bool = Field(default=True, description="Run onnxruntime's quant_pre_process first.")
    kept_as: Literal["weight_int8", "float"] = Field(
        default="weight_int8",
        description="What a MatMul the repair keeps out of static int8 becomes: MatMulNBits at 8 bits, accuracy "
                    "level 4 (int8 weights, activations quantized per block of each row at run time), or float. "
                    "Other kept nodes (Gemm, Gather) stay float either way.")

    @model_validator(mode="after")
    def _supported_ops(self) -> Int8StaticConfig:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        registry = QDQRegistry if self.quant_format == "qdq" else QLinearOpsRegistry
        unknown = [op for op in self.op_types if op not in registry]
        if unknown:
            raise ValueError(f"op_types: {unknown[0]!r} cannot be quantized in {self.quant_format} format "
                             f"(known: {', '.join(sorted(registry))})")
        return self


def pad_batches(batches: list[Inputs], pad_id: int) -> list[Inputs]:
    """Every batch padded on the right to the longest sequence of all (ids with ``pad_id``, rest 0)."""
    shapes = {value.shape[1:] for batch in batches for value in batch.values()}
    if len(shapes) <= 1:
        return batches
    longest = max(value.shape[1] for batch in batches for value in batch.values())

    def pad(name: str, value: np.ndarray) -> np.ndarray:
        width = [(0, 0), (0, longest - value.shape[1])] + [(0, 0)] * (value.ndim - 2)
        return np.pad(value, width, constant_values=pad_id if name == "input_ids" else 0)

    return [{name: pad(name, value) for name, value in batch.items()} for batch in batches]


def calibration_batches(config: Int8StaticConfig, ctx: PassContext, graph_inputs: list[str]) -> list[Inputs]:
    """Tokenized calibration sentences in batches of one shape, holding only the graph's inputs."""
    count = math.ceil(config.samples / config.batch)
    batches = ctx.calibration_inputs(ctx.sentence_file(config.calibration), count, config.batch)
    pad_id = getattr(ctx.model.tokenizer, "pad_token_id", None) or 0  # no tokenizer: a factory model
    return [{name: batch[name] for name in graph_inputs} for batch in pad_batches(batches, pad_id)]


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the inputs a caller feeds (initializers listed as inputs are not)."""
    initializers = {t.name for t in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run the body with ``path`` as the working directory (shape inference drops debug files there)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def preprocess(source: Path, scratch: Path, external: bool) -> tuple[Path, str]:
    """quant_pre_process ``source`` into ``scratch``; returns the model to quantize and what was done.

    It runs with ``scratch`` as the working directory, so both paths are made absolute first.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = source.resolve(), scratch.resolve() / "preprocessed.onnx"
    attempts = (("symbolic", {"auto_merge": True}), ("onnx", {"skip_symbolic_shape": True}))
    reasons = []
    for label, options in attempts:
        try:
            with working_dir(scratch):
                quant_pre_process(source, target, save_as_external_data=external, **options)
            return target, label
        except Exception as exc:  # onnxruntime raises bare Exceptions here
            reasons.append(f"{label}: {described(exc)}")
            log.info("int8_static: quant_pre_process (%s) failed: %s", label, reasons[-1])
    log.warning("int8_static: quant_pre_process skipped (%s)", "; ".join(reasons))
    return source, "skipped"


class _Batches:
    """A CalibrationDataReader over a list of input dicts (duck-typed: get_next and rewind)."""

    def __init__(self, batches: list[Inputs]) -> None:
        self.batches = batches
        self.position = 0

    def get_next(self) -> Inputs | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def quantize(model_path: Path, out: Path, batches: list[Inputs], config: Int8StaticConfig, excluded: list[str],
             external: bool) -> None:
    """quantize_static with the config's options; a non-finite calibrated range gets a hint."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    types = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    try:
        quantize_static(
            model_path, out, cast(Any, _Batches(batches)),
            quant_format=QuantFormat.QDQ if config.quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=config.op_types or None,
            per_channel=config.per_channel, reduce_range=config.reduce_range,
            activation_type=types[config.activation_type], weight_type=types[config.weight_type],
            nodes_to_exclude=excluded or None, use_external_data_format=external,
            calibrate_method=methods[config.method],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except ValueError as exc:
        if "not finite" not in str(exc):
            raise
        raise ValueError(f"calibration method {config.method}: a calibrated tensor holds inf or nan ({exc}); "
                         f"quantize fewer op types (op_types) or use method minmax") from exc


def weights_to_nbits(path: Path, kept: list[str], external: bool) -> None:
    """Give the kept MatMuls of a statically quantized model int8 MatMulNBits weights (accuracy level 4),
    in place; every other node stays as it is."""
    from passes.precision.matmul_nbits import MatMulNBitsConfig, NBitsQuantize

    model = load_model(path, with_data=False)
    others = tuple(node.name for node in model.graph.node if node.op_type == "MatMul" and node.name not in set(kept))
    NBitsQuantize(path, MatMulNBitsConfig(), others, external)(path, [])


def matmul_counts(model: onnx.ModelProto) -> dict[str, int]:
    """MatMuls fed only by DequantizeLinear (quantized, in QDQ form) and the others (left in float)."""
    producer = {name: node.op_type for node in model.graph.node for name in node.output}
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    quantized = sum(all(producer.get(name) == "DequantizeLinear" for name in node.input) for node in matmuls)
    qlinear = sum(node.op_type in ("QLinearMatMul", "MatMulInteger") for node in model.graph.node)
    return {"matmuls_quantized": quantized + qlinear, "matmuls_float": len(matmuls) - quantized}


def vanished(excluded: list[str], model_path: Path) -> list[str]:
    """A warning when nodes to exclude are gone from the model to quantize (pre-processing folded them)."""
    present = {node.name for node in load_model(model_path, with_data=False).graph.node}
    gone = [name for name in excluded if name not in present]
    return [f"nodes_to_exclude: {len(gone)} node(s) no longer exist after quant_pre_process, e.g. {gone[0]!r}"
            ] if gone else []


def calibration_stats(batches: list[Inputs]) -> dict[str, object]:
    """How many batches and sentences calibration ran on, and their (padded) shape."""
    shapes = [next(iter(batch.values())).shape for batch in batches if batch]
    return {"calibration_batches": len(batches), "calibration_samples": sum(shape[0] for shape in shapes),
            "calibration_shape": list(shapes[0]) if shapes else []}


class Int8StaticPass(RepairingPass):
    """Quantize weights and activations to int8 with ranges calibrated on real sentences."""

    name = "int8_static"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = Int8StaticConfig

    def check(self, ctx: PassContext) -> None:
        """The calibration file must exist and hold sentences."""
        config = cast(Int8StaticConfig, self.config)
        check_sentence_file(ctx, config.calibration, "int8_static.calibration")

    def data_digest(self, ctx: PassContext) -> str | None:
        """sha256 of the calibration file's bytes and of how many sentences are read, in what batches."""
        config = cast(Int8StaticConfig, self.config)
        path = ctx.sentence_file(config.calibration)
        return sha256_text(canonical_json({"file": sha256_file(path), "samples": config.samples,
                                           "batch": config.batch}))

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the statically quantized model to ``out_dir/model.onnx``."""
        config = cast(Int8StaticConfig, self.config)
        parent_path = model_file(parent, "int8_static", fp32=True)
        source = load_model(parent_path, with_data=False)
        excluded = select_nodes(source, config.nodes_to_exclude, "nodes_to_exclude")
        external = has_external_data(source) or weight_bytes(source) >= EXTERNAL_THRESHOLD
        batches = calibration_batches(config, ctx, graph_inputs(source))
        out = out_dir / "model.onnx"
        warnings: list[str] = []
        with tempfile.TemporaryDirectory(prefix="int8-static-") as scratch:
            model_path, prepared = (preprocess(parent_path, Path(scratch), external) if config.preprocess
                                    else (parent_path, "off"))
            if prepared == "skipped":
                warnings.append("quant_pre_process failed; MatMuls after fused operators may be left in float")
            warnings += vanished(excluded, model_path)
            prepared_model = load_model(model_path, with_data=False)
            gemms = gemm_names(prepared_model)

            def convert(target: Path, kept: list[str]) -> None:
                quantize(model_path, target, batches, config, exclusion_names(gemms, [*excluded, *kept]), external)
                if kept and config.kept_as == "weight_int8":
                    weights_to_nbits(target, kept, external)

            ops = set(config.op_types or ("MatMul", "Gather")) | {"Gemm"}
            candidates = {name: op for name, op in weight_nodes(prepared_model, ops).items() if name not in excluded}
            repaired, repair_warnings = convert_with_repair(ctx, model_path, out_dir, "int8", convert, candidates,
                                                            config, LocalizedGrowth())
            warnings += repair_warnings
        model = load_model(out, with_data=False)
        stats = {**repaired, "quantized_ops": op_counts(model, QUANTIZED_OPS), "preprocess": prepared,
                 **matmul_counts(model),
                 "excluded_nodes": len(excluded), **calibration_stats(batches),
                 "nodes_before": len(source.graph.node), "nodes_after": len(model.graph.node),
                 "bytes_before": files_bytes(parent_path), "bytes_after": files_bytes(out)}
        log.info("int8_static: quantized %s on %d sentences (preprocess %s); %d -> %d bytes",
                 stats["quantized_ops"], stats["calibration_samples"], prepared, stats["bytes_before"],
                 stats["bytes_after"])
        if not stats["quantized_ops"]:
            warnings.append("nothing was quantized (check op_types and nodes_to_exclude)")
        meta = {"precision": Precision.INT8, "quant_format": config.quant_format,
                "activation_type": config.activation_type, "weight_type": config.weight_type,
                "weight_int8_dynamic": [node.name for node in model.graph.node if node.op_type == "MatMulNBits"]}
        return PassOutput(file=out.name, meta=meta, stats=stats, warnings=warnings)
