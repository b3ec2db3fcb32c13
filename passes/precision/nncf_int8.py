"""OpenVINO IR (fp32) -> int8 IR by NNCF post-training quantization, calibrated on real sentences.

``nncf.quantize`` with the transformer preset: activations and weights of the MatMuls in int8,
SmoothQuant first (its alpha is an option), the attention mask's arithmetic left in float. Its
accuracy control needs a validation function written by hand; here the step's own parity gate is
that function: with ``repair: true``, the MatMuls are ranked by their harm each alone, measured in the first
whole build (passes.repair.localize_ir: one build, where quantizing each alone took one per MatMul),
then more of the most harmful are kept out of static int8, the fewest that pass found by bisection
(passes.repair.strategies), and NNCF is told them as its ignored scope. A MatMul kept out is first given
int8 weights with activations quantized per group of each row at run time (passes/_support/ov_weights.py:
batch-invariant, and nearly as fast as static int8), trying each group size in turn; only when no such
build passes are the kept MatMuls left in float. The manifest's meta says which formulation each got.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, field_validator

from passes._support.ov_weights import (
    GROUP_SIZES,
    compress_int8,
    compressed_matmuls,
    decline_telemetry,
    fp32_ir,
    require_nncf,
    runtime_options,
    set_group_size,
)
from passes._support.sentences import check_sentence_file
from passes.export.openvino_convert import require_openvino
from passes.repair.localize_ir import rank_by_own_harm
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.strategies import RankedGrowth
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.core.store import canonical_json, sha256_file, sha256_text
from pipeline.engine.pass_api import Inputs, PassContext, PassOutput
from pipeline.model.inputs import random_tokens

log = logging.getLogger(__name__)

FILE = "model.xml"
CANDIDATE_OPS = ("MatMul",)  # what the transformer preset quantizes, and so what a repair may keep in float


class NncfInt8Config(RepairOptions):
    """Options of nncf.quantize and of its calibration data."""

    calibration: str | None = Field(
        default=None, description="Sentence file, one per line (default: the corpus shipped with the project)."
    )
    samples: int = Field(default=64, ge=1, le=10_000, description="Sentences to calibrate on (one per sample).")
    preset: Literal["mixed", "performance"] = Field(
        default="mixed", description="'mixed': symmetric weights, asymmetric activations (NNCF's transformer "
                                     "default); 'performance': symmetric both."
    )
    smooth_quant_alpha: float = Field(
        default=0.95, ge=-1, le=1,
        description="SmoothQuant's migration strength for MatMuls (NNCF's transformer default 0.95); -1 turns "
                    "SmoothQuant off.",
    )
    fast_bias_correction: bool = Field(default=True, description="NNCF's fast bias correction (else the slow one).")
    ignored: list[str] = Field(
        default_factory=list, description="Operation names NNCF leaves in float, besides what a repair keeps."
    )
    kept_as: Literal["weight_int8", "float"] = Field(
        default="weight_int8",
        description="What a MatMul the repair keeps out of static int8 becomes: int8 weights with activations "
                    "quantized per group of each row at run time (tried first, each group size in turn), or float.")
    group_sizes: list[int] = Field(
        default=list(GROUP_SIZES), min_length=1,
        description="Dynamic quantization group sizes tried for the kept MatMuls, in order (larger is faster).")

    @field_validator("group_sizes")
    @classmethod
    def _powers_of_two(cls, sizes: list[int]) -> list[int]:
        if any(size < 8 or size & (size - 1) for size in sizes):
            raise ValueError(f"group sizes are powers of two from 8, got {sizes}")
        return sizes


class NncfInt8Pass(RepairingPass):
    """Quantize an fp32 OpenVINO IR to int8 with NNCF, optionally repaired against the parity gate."""

    name = "nncf_int8"
    consumes = frozenset({Format.OPENVINO})
    produces = Format.OPENVINO
    Config = NncfInt8Config

    def check(self, ctx: PassContext) -> None:
        """OpenVINO and NNCF must be installed, and the calibration file must hold sentences."""
        require_openvino(self.name)
        require_nncf(self.name)
        config = cast(NncfInt8Config, self.config)
        check_sentence_file(ctx, config.calibration, "nncf_int8.calibration")

    def data_digest(self, ctx: PassContext) -> str | None:
        """sha256 of the calibration file's bytes and of how many sentences are read."""
        config = cast(NncfInt8Config, self.config)
        return sha256_text(canonical_json({"file": sha256_file(ctx.sentence_file(config.calibration)),
                                           "samples": config.samples}))

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the quantized IR to ``out_dir/model.xml`` (weights in model.bin)."""
        import openvino as ov

        config = cast(NncfInt8Config, self.config)
        ir = fp32_ir(parent, self.name)
        source = ov.Core().read_model(str(ir))
        candidates = {op.get_friendly_name(): op.get_type_name() for op in source.get_ordered_ops()
                      if op.get_type_name() in CANDIDATE_OPS}
        unknown = [name for name in config.ignored if name not in candidates]
        if unknown:
            raise ValueError(f"ignored: the model has no MatMul named {unknown[0]!r}")
        names = [port.get_any_name() for port in source.inputs]
        samples = [{name: batch[name] for name in names}
                   for batch in ctx.calibration_inputs(ctx.sentence_file(config.calibration), config.samples, 1)]

        free = {name: op for name, op in candidates.items() if name not in config.ignored}

        def rank(first: Path, parent_path: Path, probe: Inputs, names: set[str]) -> list[dict[str, Any]]:
            """Each candidate's own harm in the first build, on the probe and on random tokens."""
            return rank_by_own_harm(first, parent_path, [probe, *random_probe(ctx, probe)], names, free)

        repaired: dict[str, Any] = {}
        warnings: list[str] = []
        group: int | None = None
        for group in [*(config.group_sizes if config.kept_as == "weight_int8" else []), None]:
            build = Builder(ir, samples, config, group)
            repaired, warnings = convert_with_repair(ctx, ir, out_dir, "int8", build, free, config,
                                                     RankedGrowth(rank), fmt=Format.OPENVINO)
            if not warnings or not config.repair:
                break
            log.info("nncf_int8: kept MatMuls %s do not pass; trying %s", _formulation(group),
                     "the next" if group is not None else "float")
        written = ov.Core().read_model(str(out_dir / FILE))
        stats = {**repaired, **quantized_counts(written), "candidates": len(candidates),
                 "calibration_samples": len(samples)}
        log.info("nncf_int8: %d FakeQuantize, %d of %d MatMuls candidates", stats.get("fake_quantize", 0),
                 len(free), len(candidates))
        return PassOutput(file=FILE, meta=_meta(config, written, group), stats=stats, warnings=warnings)


class Builder:
    """One build of the repair: static int8 with ``kept`` MatMuls left out, and those given int8 weights with
    dynamic activation groups of ``group`` channels (None: left in float)."""

    def __init__(self, parent: Path, samples: list[Inputs], config: NncfInt8Config, group: int | None) -> None:
        self.parent, self.samples, self.config, self.group = parent, samples, config, group

    def __call__(self, target: Path, kept: list[str]) -> None:
        import openvino as ov

        model = quantize(ov.Core().read_model(str(self.parent)), self.samples, self.config,
                         [*self.config.ignored, *kept])
        if kept and self.group is not None:
            model = compress_int8(model, kept)
            set_group_size(model, self.group)
        ov.save_model(model, str(target), compress_to_fp16=False)


def _formulation(group: int | None) -> str:
    return f"as int8 weights with dynamic activation groups of {group}" if group is not None else "in float"


def _meta(config: NncfInt8Config, model: Any, group: int | None) -> dict[str, Any]:
    """Precision, the options, and which MatMuls got int8 weights with dynamic activations (and the group
    size, also in the IR's runtime options) rather than static int8 or float."""
    dynamic = compressed_matmuls(model)
    meta: dict[str, Any] = {"precision": Precision.INT8, "smooth_quant_alpha": config.smooth_quant_alpha,
                            "preset": config.preset, "weight_int8_dynamic": dynamic}
    if dynamic and group is not None:
        meta["runtime_options"] = runtime_options(model)
    return meta


def random_probe(ctx: PassContext, probe: Inputs) -> list[Inputs]:
    """Random tokens shaped as ``probe`` (none for a model without a tokenizer): the gate's cases
    include them, and on MiniLM they show harm that real sentences do not."""
    tokenizer = ctx.model.tokenizer
    ids = probe.get("input_ids")
    if tokenizer is None or ids is None:
        return []
    text = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in probe]
    batch, seq = ids.shape
    return [{**probe, **random_tokens(text, batch, seq, len(tokenizer), seed=5)}]


def quantize(model: Any, samples: list[Inputs], config: NncfInt8Config, ignored: list[str]) -> Any:
    """nncf.quantize with the transformer preset and the config's options; ``ignored`` ops stay in float."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    nncf.set_log_level(logging.ERROR)  # its INFO lines and progress bars are not this run's story
    decline_telemetry()
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth_quant_alpha))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        return nncf.quantize(model, nncf.Dataset(samples), preset=presets[config.preset],
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples),
                             fast_bias_correction=config.fast_bias_correction,
                             ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
                             advanced_parameters=advanced)


def quantized_counts(model: Any) -> dict[str, int]:
    """FakeQuantize operations, and the MatMuls whose activation a FakeQuantize feeds (static int8; NNCF puts
    one straight in front of each MatMul it quantizes), those with int8 weights and dynamic activations, and
    the rest (float)."""
    counts = Counter(op.get_type_name() for op in model.get_ordered_ops())
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    fed = sum(any(port.get_source_output().get_node().get_type_name() == "FakeQuantize" for port in op.inputs())
              for op in matmuls)
    dynamic = len(compressed_matmuls(model))
    return {"fake_quantize": counts.get("FakeQuantize", 0), "matmuls_quantized": fed,
            "matmuls_weight_int8_dynamic": dynamic, "matmuls_float": len(matmuls) - fed - dynamic}
