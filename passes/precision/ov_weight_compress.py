"""OpenVINO IR (fp32) -> IR with int8 or int4 weights by ``nncf.compress_weights`` (activations stay float; the
CPU plugin may quantize them per group at run time, ``activation_group_size``).

In an int4 mode the MatMuls of the body take 4 bits (``ratio`` of their weights; the rest the backup mode,
chosen by NNCF's sensitivity), optionally with AWQ and scale estimation, which need data: prompts from a
sentence file, each tokenized alone and given an empty key/value cache (a decoder), as the model runs them.
The input embedding tables and the output projection (the MatMul that makes ``logits``) are each either
compressed to 8 bits or kept in float, as the config says, never by NNCF's own first/last-layer rule.

With ``repair: true``, when the gate fails, MatMuls go back from int4 to int8 (``repair_to``), or to float,
chosen by measured sensitivity (passes.repair.weight_error: each MatMul's output error with its weights on
the 4-bit grid, on real activations), more of them each round, the fewest that pass found by bisection
(passes.repair.strategies.RankedGrowth). In an int8 mode the repair keeps MatMuls in float.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_validator

from passes._support.ov_layers import Layers, constant_types, find_layers, matmul_precisions, weight_precisions
from passes._support.ov_weights import decline_telemetry, fp32_ir, require_nncf, runtime_options, set_group_size
from passes._support.sentences import check_sentence_file
from passes.export.openvino_convert import require_openvino
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.strategies import RankedGrowth
from passes.repair.weight_error import Grid, rank_by_weight_error
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.core.store import canonical_json, sha256_file, sha256_text
from pipeline.engine.pass_api import Inputs, PassContext, PassOutput
from pipeline.model.cache import cache_layout
from pipeline.model.inputs import load_sentences
from pipeline.verify.greedy import prompt_batches

log = logging.getLogger(__name__)

FILE = "model.xml"
RANKING_PROMPTS = 8  # of the calibration prompts, those the repair's ranking runs the parent on
Mode = Literal["int8_asym", "int8_sym", "int4_asym", "int4_sym"]


class OvWeightCompressConfig(RepairOptions):
    """Options of nncf.compress_weights, of its calibration prompts and of the repair."""

    mode: Mode = Field(default="int4_asym", description="Weight grid of the body's MatMuls: 8 or 4 bits, with a "
                                                        "zero point (asym) or without (sym).")
    group_size: int = Field(default=128, description="int4: input channels per scale; -1: one scale per output "
                                                     "channel.")
    group_size_fallback: Literal["adjust", "ignore", "error"] = Field(
        default="adjust", description="int4: a MatMul whose input channels group_size does not divide (SmolLM2's "
                                      "576 by 128): 'adjust' takes the largest group of at least 32 that divides "
                                      "them, 'ignore' leaves it at the backup mode, 'error' refuses (NNCF).")
    ratio: float = Field(default=1.0, gt=0, le=1, description="int4: share of the body's MatMul weights in int4; "
                                                              "the rest take the backup mode, the most sensitive "
                                                              "first (NNCF's measure; on the prompts when given).")
    backup_mode: Literal["int8_asym", "int8_sym", "none"] = Field(
        default="int8_asym", description="int4: what the weights left out of int4 by ``ratio`` become ('none': "
                                         "float); also the 8-bit grid of the embedding, the output projection and "
                                         "repaired MatMuls (asymmetric when 'none').")
    awq: bool = Field(default=False, description="int4: activation-aware weight scaling (AWQ), on the prompts.")
    scale_estimation: bool = Field(default=False, description="int4: scales fitted to the prompts' activations.")
    calibration: str | None = Field(default=None, description="Sentence file of the prompts (default: the corpus "
                                                              "shipped with the project); its last sentences are "
                                                              "taken (a gate's prompts are its first).")
    calibration_prompts: int = Field(default=32, ge=1, le=1024, description="Prompts for the data-aware methods "
                                     "(awq, scale_estimation, ratio below 1) and for the repair's ranking, each "
                                     "alone with an empty cache.")
    embedding: bool = Field(default=True, description="Compress the input embedding tables to 8 bits (false: keep "
                                                      "them in float).")
    lm_head: bool = Field(default=True, description="Compress the output projection (the MatMul that makes the "
                                                    "logits) to 8 bits (false: keep it in float).")
    repair_to: Literal["int8", "float"] = Field(default="int8", description="What a MatMul the repair takes out of "
                                                                            "int4 becomes (int8 modes: float only).")
    activation_group_size: int | None = Field(
        default=None, ge=0, description="DYNAMIC_QUANTIZATION_GROUP_SIZE written into the IR's runtime options: "
                                        "the CPU plugin quantizes activations feeding compressed weights per group "
                                        "of this many channels; 0 turns that off; null leaves the plugin's default.")

    @field_validator("group_size")
    @classmethod
    def _group(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("group_size is -1 (per output channel) or at least 1")
        return value

    @model_validator(mode="after")
    def _fits_the_mode(self) -> OvWeightCompressConfig:
        if self.bits == 8:
            used = [name for name, on in (("awq", self.awq), ("scale_estimation", self.scale_estimation),
                                          ("ratio below 1", self.ratio < 1)) if on]
            if used:
                raise ValueError(f"{', '.join(used)}: for int4 modes only (mode {self.mode})")
            if self.repair and self.repair_to == "int8":
                raise ValueError(f"repair_to int8: mode {self.mode} is int8 already; its repair keeps MatMuls "
                                 "in float (repair_to: float)")
        return self

    @property
    def bits(self) -> int:
        """4 or 8."""
        return 4 if self.mode.startswith("int4") else 8

    @property
    def data_aware(self) -> bool:
        """Whether NNCF needs the prompts."""
        return self.awq or self.scale_estimation or self.ratio < 1

    @property
    def int8_mode(self) -> str:
        """The 8-bit grid of the embedding, the output projection and repaired MatMuls."""
        if self.bits == 8:
            return self.mode
        return self.backup_mode if self.backup_mode != "none" else "int8_asym"


class OvWeightCompressPass(RepairingPass):
    """Compress an fp32 IR's weights to int8 or int4 with NNCF, optionally repaired against the parity gate."""

    name = "ov_weight_compress"
    consumes = frozenset({Format.OPENVINO})
    produces = Format.OPENVINO
    Config = OvWeightCompressConfig

    def check(self, ctx: PassContext) -> None:
        """OpenVINO and NNCF must be installed, and the prompts' file must hold sentences."""
        require_openvino(self.name)
        require_nncf(self.name)
        check_sentence_file(ctx, cast(OvWeightCompressConfig, self.config).calibration,
                            "ov_weight_compress.calibration")

    def data_digest(self, ctx: PassContext) -> str | None:
        """sha256 of the prompts' file and count, when they are read."""
        config = cast(OvWeightCompressConfig, self.config)
        if not (config.data_aware or config.repair):
            return None
        return sha256_text(canonical_json({"file": sha256_file(ctx.sentence_file(config.calibration)),
                                           "prompts": config.calibration_prompts}))

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the IR to ``out_dir/model.xml`` (weights in model.bin)."""
        import openvino as ov

        config = cast(OvWeightCompressConfig, self.config)
        source = fp32_ir(parent, self.name)
        layers = find_layers(ov.Core().read_model(str(source)))
        samples = prompts(ctx, config) if config.data_aware or config.repair else []
        build = Builder(source, layers, samples if config.data_aware else [], config)
        candidates = repair_candidates(config, layers)
        grid = Grid(config.bits, config.mode.endswith("sym"), config.group_size if config.bits == 4 else -1)

        def rank(first: Path, parent_path: Path, probe: Inputs, names: set[str]) -> list[dict[str, Any]]:
            """The candidates at the mode's bits in the first build, by their output error on the grid, on the
            prompts' activations in the parent."""
            found = matmul_precisions(ov.Core().read_model(str(first)))
            chosen = {name: candidates[name] for name in names if found.get(name) == f"int{config.bits}"}
            return rank_by_weight_error(parent_path, samples[:RANKING_PROMPTS], chosen, grid)

        precision = Precision.INT4 if config.bits == 4 else Precision.INT8
        repaired, warnings = convert_with_repair(ctx, source, out_dir, precision.value, build, candidates, config,
                                                 RankedGrowth(rank), fmt=Format.OPENVINO)
        written = ov.Core().read_model(str(out_dir / FILE))
        stats = {**repaired, **summary(written, layers, config), "calibration_prompts": len(samples)}
        if repaired:
            kept = [row["node"] for row in repaired["repair"]["kept_in_float"]]
            stats["repaired"] = {"to": "float" if config.bits == 8 else config.repair_to, "layers": kept}
        log.info("ov_weight_compress: %s, MatMuls %s", config.mode, stats["matmuls"])
        return PassOutput(file=FILE, meta=meta(config, written, precision), stats=stats, warnings=warnings)


class Builder:
    """One build: the config's compression with ``kept`` MatMuls (the repair's) at ``repair_to`` instead."""

    def __init__(self, parent: Path, layers: Layers, samples: list[Inputs], config: OvWeightCompressConfig) -> None:
        self.parent, self.layers, self.samples, self.config = parent, layers, samples, config

    def __call__(self, target: Path, kept: list[str]) -> None:
        import openvino as ov

        model = self.compress(ov.Core().read_model(str(self.parent)), kept)
        if self.config.activation_group_size is not None:
            set_group_size(model, self.config.activation_group_size)
        ov.save_model(model, str(target), compress_to_fp16=False)

    def compress(self, model: Any, kept: list[str]) -> Any:
        """``model`` compressed: the body at the mode, then what takes 8 bits beside it."""
        config, layers = self.config, self.layers
        to_int8 = [*(layers.embeddings if config.embedding else []),
                   *([layers.lm_head] if config.lm_head and layers.lm_head else [])]
        if config.bits == 8:
            return nncf_compress(model, config.mode, [name for name in [*to_int8, *layers.body] if name not in kept])
        body = [name for name in layers.body if name not in kept]
        model = nncf_compress(model, config.mode, body, group_size=config.group_size, ratio=config.ratio,
                              all_layers=True, awq=config.awq, scale_estimation=config.scale_estimation,
                              backup_mode=config.backup_mode, group_size_fallback=config.group_size_fallback,
                              samples=self.samples)
        if config.repair_to == "int8":
            to_int8 += kept
        return nncf_compress(model, config.int8_mode, to_int8) if to_int8 else model


def nncf_compress(model: Any, mode: str, names: list[str], samples: list[Inputs] | None = None,
                  **options: Any) -> Any:
    """``nncf.compress_weights`` of the weights of the operations ``names`` only, at ``mode``; the prompts, when
    given, as its dataset (all of them)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    nncf.set_log_level(logging.ERROR)
    decline_telemetry()
    others = [op.get_friendly_name() for op in model.get_ordered_ops()
              if op.get_type_name() in ("MatMul", "Gather") and op.get_friendly_name() not in set(names)]
    if "backup_mode" in options:
        options["backup_mode"] = nncf.BackupMode(options["backup_mode"])
    if "group_size_fallback" in options:
        options["advanced_parameters"] = AdvancedCompressionParameters(
            group_size_fallback_mode=GroupSizeFallbackMode(options.pop("group_size_fallback")))
    if samples:
        options.update(dataset=nncf.Dataset(samples), subset_size=len(samples))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode(mode),
                                     ignored_scope=nncf.IgnoredScope(names=others) if others else None, **options)


def repair_candidates(config: OvWeightCompressConfig, layers: Layers) -> dict[str, str]:
    """The MatMuls a repair may change: the body's (int8: with the output projection when it is compressed);
    the ranking keeps those the first build has at the mode's bits."""
    if not config.repair:
        return {}
    names = [*layers.body, *([layers.lm_head] if config.bits == 8 and config.lm_head and layers.lm_head else [])]
    return dict.fromkeys(names, "MatMul")


def prompts(ctx: PassContext, config: OvWeightCompressConfig) -> list[Inputs]:
    """The last ``calibration_prompts`` sentences of the file, each tokenized alone; a decoder's with an empty
    cache (the inputs of a prefill)."""
    path = ctx.sentence_file(config.calibration)
    sentences = load_sentences(path)[-config.calibration_prompts:]
    tokenizer = ctx.model.tokenizer
    if tokenizer is None or ctx.model.task != "text-generation":
        return ctx.calibration_inputs(path, config.calibration_prompts, 1)
    layout = cache_layout(ctx.model.hf_config)
    return [{**prompt, **layout.empty(1)} for prompt in prompt_batches(tokenizer, sentences, 1)]


def summary(model: Any, layers: Layers, config: OvWeightCompressConfig) -> dict[str, Any]:
    """What the written IR holds: MatMuls by weight precision, those not at the mode's bits, the embedding and the
    output projection's precision, and the weight constants by element type."""
    found = matmul_precisions(model)
    counts: dict[str, int] = {}
    for value in found.values():
        counts[value] = counts.get(value, 0) + 1
    wanted = f"int{config.bits}"
    embedded = weight_precisions(model, layers.embeddings)
    return {"matmuls": counts, "body_not_at_mode": {name: value for name, value in found.items()
                                                         if value != wanted and name in set(layers.body)},
            "embedding": {"compressed": config.embedding, "precision": embedded},
            "lm_head": {"compressed": config.lm_head, "node": layers.lm_head,
                        "precision": found.get(layers.lm_head) if layers.lm_head else None},
            "constant_types": constant_types(model)}


def meta(config: OvWeightCompressConfig, model: Any, precision: Precision) -> dict[str, Any]:
    """Precision, the weight grid, and whether the embedding and the output projection were compressed."""
    values: dict[str, Any] = {"precision": precision, "weights": config.mode, "embedding": config.embedding,
                              "lm_head": config.lm_head}
    if config.bits == 4:
        values.update(group_size=config.group_size, group_size_fallback=config.group_size_fallback,
                      ratio=config.ratio, awq=config.awq, scale_estimation=config.scale_estimation,
                      backup_mode=config.backup_mode)
    options = runtime_options(model)
    if options:
        values["runtime_options"] = options
    return values
