"""ort_optimize: onnxruntime's transformer optimizer (operator fusions) on an fp32 ONNX model.

The optimizer fuses subgraphs into contrib operators (Attention, SkipLayerNormalization, Gelu, ...).
Which fusions happen depends on how the model was exported: on a transformers 5 export no
Attention fuses, only the layer norms and Gelu. Each expected fusion that did not happen is a
warning; the optimized model is checked against its parent at a shape other than the export shape.

``opt_level`` above 1 lets onnxruntime write nodes specific to the execution provider it ran
with (CPU unless ``use_gpu``): such a model should only be run on that kind of device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, cast

import numpy as np
from pydantic import Field, field_validator, model_validator

from passes._support.onnx_io import (
    EXTERNAL_THRESHOLD,
    files_bytes,
    has_external_data,
    load_model,
    max_abs_diff,
    model_file,
    save_model,
    shapes_to_check,
    weight_bytes,
)
from passes.graph.layer_norm import MIN_OPSET, split_skip_layer_norms, standard_opset
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import Pass, PassConfig, PassContext, PassOutput
from pipeline.runtime.runner import run_onnx

log = logging.getLogger(__name__)

# An expected fusion counts as done when any of these fused operators appears.
FUSION_GROUPS: dict[str, tuple[str, ...]] = {
    "Attention": ("Attention", "MultiHeadAttention", "QOrderedAttention"),
    "Gelu": ("Gelu", "FastGelu", "BiasGelu", "GemmFastGelu", "QOrderedGelu"),
    "LayerNormalization": ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
                           "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"),
    "SkipLayerNormalization": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"),
}


def fusion_names(model_type: str = "bert") -> list[str]:
    """Fusions that ``disable`` may name: the ``enable_*`` switches of onnxruntime's FusionOptions."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    return sorted(name.removeprefix("enable_") for name in vars(options) if name.startswith("enable_"))


class OrtOptimizeConfig(PassConfig):
    """Options of onnxruntime.transformers.optimizer.optimize_model."""

    model_type: str = Field(default="bert", description="Optimizer model type (bert, gpt2, t5, vit, ...).")
    num_heads: int = Field(default=0, ge=0, description="Attention heads; 0 takes them from the model's "
                                                         "config (onnxruntime's own detection often fails).")
    hidden_size: int = Field(default=0, ge=0, description="Hidden size; 0 takes it from the model's config.")
    opt_level: Literal[0, 1, 2, 99] = Field(
        default=1,
        description="onnxruntime graph optimization before the fusions: 0 none (fusions only), 1 basic; "
                    "2 and 99 write provider-specific nodes (run the result only on that device).",
    )
    use_gpu: bool = Field(default=False, description="Optimize for the CUDA execution provider.")
    only_onnxruntime: bool = Field(default=False, description="Only onnxruntime's optimizer, no fusions.")
    disable: list[str] = Field(
        default_factory=list,
        description="Fusions to turn off, e.g. attention, gelu, skip_layer_norm, embed_layer_norm, bias_gelu.",
    )
    expect: list[str] = Field(
        default_factory=lambda: ["Attention", "SkipLayerNormalization", "Gelu"],
        description="Fused operators expected; each one missing is a warning. Gelu, Attention and "
                    "LayerNormalization also accept their variants (BiasGelu, MultiHeadAttention, ...).",
    )
    tolerance: float = Field(
        default=1e-3, gt=0, description="Largest abs difference from the parent allowed at the check shape."
    )
    unfuse_skip_layer_norm: bool = Field(
        default=False, description="After fusing, write each SkipLayerNormalization as Sum + "
        "LayerNormalization, which onnxruntime runs faster on CPU and does not fuse again "
        "(passes/graph/layer_norm.py).")

    @field_validator("model_type")
    @classmethod
    def _known_model_type(cls, value: str) -> str:
        from onnxruntime.transformers.optimizer import MODEL_TYPES

        if value not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {value!r} (known: {', '.join(sorted(MODEL_TYPES))})")
        return value

    @model_validator(mode="after")
    def _known_fusions(self) -> OrtOptimizeConfig:
        known = fusion_names(self.model_type)
        unknown = [name for name in self.disable if name.removeprefix("enable_") not in known]
        if unknown:
            raise ValueError(f"disable: unknown fusion {unknown[0]!r} (known: {', '.join(known)})")
        return self


def fusion_options(config: OrtOptimizeConfig) -> object:
    """FusionOptions for the model type with the ``disable`` switches turned off."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(config.model_type)
    for name in config.disable:
        setattr(options, "enable_" + name.removeprefix("enable_"), False)
    return options


def attention_shape(config: OrtOptimizeConfig, ctx: PassContext) -> tuple[int, int]:
    """(num_heads, hidden_size): from the pass config, else from the model's config, else 0 (detect).

    Without them onnxruntime's detection fails on current transformers exports ("Failed to detect
    num_heads and hidden_size") and no Attention fuses.
    """
    hf = getattr(ctx.model, "hf_config", None)
    heads = config.num_heads or int(getattr(hf, "num_attention_heads", 0) or getattr(hf, "n_heads", 0) or 0)
    hidden = config.hidden_size or int(getattr(hf, "hidden_size", 0) or getattr(hf, "dim", 0) or 0)
    return heads, hidden


def missing_fusions(counts: dict[str, int], expect: list[str]) -> list[str]:
    """The expected fusions of which no operator (nor an accepted variant) appears in ``counts``."""
    return [name for name in expect
            if not any(counts.get(op, 0) for op in FUSION_GROUPS.get(name, (name,)))]


def check_against_parent(parent: Path, child: Path, ctx: PassContext, tolerance: float) -> dict[str, object]:
    """Run both models at a shape other than the export shape; raise if they differ beyond ``tolerance``."""
    batch, seq = shapes_to_check(ctx.io, getattr(ctx.model, "max_positions", None))[-1]
    inputs = ctx.sample_inputs(batch, seq)
    want, got = run_onnx(parent, inputs, ctx.device), run_onnx(child, inputs, ctx.device)
    mask = inputs.get("attention_mask")
    worst = max(max_abs_diff(np.asarray(got[name]), np.asarray(want[name]), mask) for name in want)
    if not worst <= tolerance:
        raise ValueError(f"optimized model differs from its parent by {worst:.3g} at batch {batch}, "
                         f"sequence {seq} (tolerance {tolerance:g})")
    return {"check_shape": [batch, seq], "max_abs_diff": worst}


class OrtOptimizePass(Pass):
    """Fuse transformer subgraphs with onnxruntime's optimizer (fp32 in, fp32 out)."""

    name = "ort_optimize"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = OrtOptimizeConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Optimize ``parent`` into ``out_dir/model.onnx`` and report the fusions."""
        from onnxruntime.transformers.optimizer import optimize_model

        config = cast(OrtOptimizeConfig, self.config)
        parent_path = model_file(parent, "ort_optimize")
        source = load_model(parent_path, with_data=False)
        num_heads, hidden_size = attention_shape(config, ctx)
        optimizer = optimize_model(
            str(parent_path), model_type=config.model_type, num_heads=num_heads,
            hidden_size=hidden_size, optimization_options=fusion_options(config),
            opt_level=config.opt_level, use_gpu=config.use_gpu, only_onnxruntime=config.only_onnxruntime,
        )
        counts = {op: int(n) for op, n in optimizer.get_fused_operator_statistics().items()}
        unfused = split_skip_layer_norms(optimizer.model) if config.unfuse_skip_layer_norm else 0
        out = out_dir / "model.onnx"
        external = has_external_data(source) or weight_bytes(optimizer.model) >= EXTERNAL_THRESHOLD
        save_model(optimizer.model, out, external)
        warnings = self._warnings(counts, config, ctx)
        if config.unfuse_skip_layer_norm and counts.get("SkipLayerNormalization") and not unfused:
            warnings.append(f"unfuse_skip_layer_norm: nothing unfused (opset {standard_opset(optimizer.model)}; "
                            f"LayerNormalization needs {MIN_OPSET})")
        stats: dict[str, object] = {
            "num_heads": num_heads, "hidden_size": hidden_size, "nodes_before": len(source.graph.node),
            "nodes_after": len(optimizer.model.graph.node),
            "fused": {op: n for op, n in counts.items() if n},
            **({"skip_layer_norms_unfused": unfused} if config.unfuse_skip_layer_norm else {}),
            "bytes_before": files_bytes(parent_path), "bytes_after": files_bytes(out),
            **check_against_parent(parent_path, out, ctx, config.tolerance),
        }
        log.info("ort_optimize: %d -> %d nodes, fused %s", stats["nodes_before"], stats["nodes_after"],
                 stats["fused"])
        meta: dict[str, object] = {"precision": parent.precision, "opt_level": config.opt_level}
        if config.opt_level > 1:
            meta["device_specific"] = "cuda" if config.use_gpu else "cpu"
        return PassOutput(file=out.name, meta=meta, stats=stats, warnings=warnings)

    @staticmethod
    def _warnings(counts: dict[str, int], config: OrtOptimizeConfig, ctx: PassContext) -> list[str]:
        warnings = [f"expected fusion {name} did not happen (fused: "
                    f"{', '.join(f'{op} {n}' for op, n in counts.items() if n) or 'nothing'})"
                    for name in missing_fusions(counts, config.expect)]
        spec = getattr(ctx.model, "spec", None)
        eager_attention = getattr(spec, "attn_implementation", "") == "eager"
        if "Attention" in missing_fusions(counts, config.expect) and not eager_attention:
            warnings.append("attention fuses on an export of the eager attention implementation: set "
                            "model.attn_implementation: eager")
        if config.opt_level > 1 and config.use_gpu != (ctx.device == "cuda"):
            warnings.append(f"opt_level {config.opt_level} wrote {'GPU' if config.use_gpu else 'CPU'}-specific "
                            f"nodes, but the pipeline runs on {ctx.device}")
        return warnings  # the manager logs each one
