"""Eager model -> ONNX with dynamic axes, by the TorchScript-based or the dynamo exporter.

The export goes through the model's wrapper module (with transformers 5.x, positional export
arguments land on the wrong parameters otherwise). What is written is then proven, not assumed:
onnxruntime must match a fresh eager model at the export shape and at a different one. The checks
every ONNX step shares (onnx.checker, names, symbolic axes) run in the manager after the step.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from passes._support import onnx_io as ou
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import Inputs, IOSpec, Pass, PassConfig, PassContext, PassOutput
from pipeline.engine.postconditions import specialization_hint

if TYPE_CHECKING:  # torch is imported where it runs, so that listing passes needs none
    import torch

log = logging.getLogger(__name__)

FILE = "model.onnx"
MIN_OPSET = 9  # constant folding and the ops BERT-like models need
MAX_OPSET = 23  # newest opset torch.onnx knows
TORCHSCRIPT_MAX_OPSET = 20  # newest the TorchScript-based exporter implements
DYNAMO_MIN_OPSET = 18  # the dynamo exporter translates at 18 or later and converts down
# The dynamo exporter logs every rewrite at INFO and its opset conversion at WARNING; the pass
# reports what matters (the opset really written) itself.
NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


class OnnxExportConfig(PassConfig):
    """Options of the onnx_export pass."""

    exporter: Literal["torchscript", "dynamo"] = Field(
        default="torchscript",
        description="'torchscript': torch.onnx.export(dynamo=False), fast; 'dynamo': the torch.export-based "
                    "exporter (slower; translates at opset >= 18 and converts down to a lower one).",
    )
    opset: int = Field(
        default=17, ge=MIN_OPSET, le=MAX_OPSET,
        description=f"ONNX opset ({MIN_OPSET} to {TORCHSCRIPT_MAX_OPSET} for the torchscript exporter, "
                    f"up to {MAX_OPSET} for dynamo). The opset really written is in the stats.",
    )
    do_constant_folding: bool = Field(
        default=True,
        description="Fold constant subgraphs at export (for dynamo: run its ONNX graph optimizer).",
    )
    external_data: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Weights in model.onnx.data beside the file: 'auto' when they exceed 1.8 GB (protobuf "
                    "cannot hold 2 GB), 'always', or 'never' (an error for a model that needs it).",
    )
    tolerance: float = Field(
        default=1e-3, gt=0, description="Largest absolute difference from eager allowed in the check."
    )

    @model_validator(mode="after")
    def _opset_fits_exporter(self) -> OnnxExportConfig:
        if self.exporter == "torchscript" and self.opset > TORCHSCRIPT_MAX_OPSET:
            raise ValueError(f"opset {self.opset}: the torchscript exporter supports up to opset "
                             f"{TORCHSCRIPT_MAX_OPSET}; use exporter: dynamo for a newer one")
        return self


class OnnxExportPass(Pass):
    """Export the eager model to ONNX and prove the file dynamic and numerically equal."""

    name = "onnx_export"
    consumes = frozenset({Format.EAGER})
    produces = Format.ONNX
    Config = OnnxExportConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        cfg: OnnxExportConfig = self.config  # type: ignore[assignment]
        if parent.format is not Format.EAGER:
            raise ValueError(f"onnx_export reads the eager model, not a {parent.format.value} artifact")
        reference, inputs, expected = ou.fresh_reference(ctx)
        params = parameter_bytes(reference.module)
        del reference
        external = use_external(cfg.external_data, params)

        path = out_dir / FILE
        tracer_warnings = self._export_to(path, ctx.model.load().module, inputs[0], ctx.io, cfg, external)
        model = ou.load_model(path, with_data=False)
        warns = dropped_inputs(model, ctx.io)
        try:
            diffs = ou.check_at_shapes(lambda x: ou.run_checked(path, x), f"{path.name} in onnxruntime", inputs,
                                       expected, ctx.io.output_names, cfg.tolerance)
        except (ValueError, RuntimeError) as exc:
            raise type(exc)(f"{exc}{specialization_hint(ctx.io)}") from exc

        real_opset = ou.opset(model)
        if real_opset != cfg.opset:
            warns.append(f"asked for opset {cfg.opset}, the {cfg.exporter} exporter wrote opset {real_opset}")
        stats = export_stats(model, path, cfg, params, external, tracer_warnings)
        stats["check"] = [{"shape": ou.shape_text(x), "max_abs_diff": d} for x, d in zip(inputs, diffs, strict=True)]
        meta = {"precision": Precision.FP32, "opset": real_opset, "exporter": cfg.exporter, "external_data": external}
        for text in warns:
            log.warning("onnx_export: %s", text)
        return PassOutput(file=FILE, meta=meta, stats=stats, warnings=warns)

    def _export_to(self, path: Path, module: torch.nn.Module, example: Inputs, io: IOSpec,
                   cfg: OnnxExportConfig, external: bool) -> int:
        """Export into a scratch folder, then store at ``path`` with our external-data layout.

        Returns the number of TracerWarnings the export raised.
        """
        scratch = path.parent / ".export"
        scratch.mkdir()
        try:
            with warnings.catch_warnings(record=True) as caught, quiet_loggers():
                warnings.simplefilter("always")
                export(module, example, scratch / FILE, io, cfg)
            ou.save_model(ou.load_model(scratch / FILE), path, external)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return ou.count_tracer_warnings(caught)


def export(module: torch.nn.Module, example: Inputs, path: Path, io: IOSpec, cfg: OnnxExportConfig) -> None:
    """Run the chosen exporter on ``module`` with the example inputs, writing ``path``."""
    import torch

    args = tuple(torch.from_numpy(example[name]) for name in io.input_names)
    common: dict[str, Any] = {"input_names": io.input_names, "output_names": io.output_names,
                              "opset_version": cfg.opset, "verbose": False}
    if cfg.exporter == "torchscript":
        names = set(io.input_names) | set(io.output_names)
        axes = {name: dict(axes) for name, axes in io.dynamic_axes.items() if name in names}
        torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=axes,
                          do_constant_folding=cfg.do_constant_folding, **common)
    else:
        # Positional dynamic_shapes: the wrapper's parameter names need not equal the io names.
        shapes = tuple(dict(io.dynamic_axes[name]) if name in io.dynamic_axes else None
                       for name in io.input_names)
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=shapes, external_data=True,
                          optimize=cfg.do_constant_folding, report=False, verify=False, **common)


@contextmanager
def quiet_loggers(names: tuple[str, ...] = NOISY_LOGGERS, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the level of the exporters' chatty loggers for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved, strict=True):
            lg.setLevel(old)


def export_stats(model: Any, path: Path, cfg: OnnxExportConfig, params: int, external: bool,
                 tracer_warnings: int) -> dict[str, Any]:
    """Numbers worth keeping about an exported file."""
    converted = cfg.exporter == "dynamo" and cfg.opset < DYNAMO_MIN_OPSET
    return {
        "exporter": cfg.exporter, "opset": ou.opset(model), "nodes": len(model.graph.node),
        "initializers": len(model.graph.initializer), "op_histogram": ou.op_histogram(model, top=15),
        "file_bytes": ou.files_bytes(path), "parameter_bytes": params, "external_data": external,
        "tracer_warnings": tracer_warnings, "converted_from_opset": DYNAMO_MIN_OPSET if converted else None,
    }


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers (tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def use_external(choice: str, params: int) -> bool:
    """Whether the weights go to an external .data file."""
    if choice == "always":
        return True
    if params > ou.EXTERNAL_THRESHOLD:
        if choice == "never":
            raise ValueError(f"external_data: never, but the model has {params / 1e9:.2f} GB of weights; "
                             f"ONNX files over 2 GB need external data (use auto)")
        return True
    return False


def dropped_inputs(model: Any, io: IOSpec) -> list[str]:
    """A warning naming the model inputs the exporter left out of the graph (unused by the model)."""
    inputs = {i.name for i in model.graph.input}
    dropped = [name for name in io.input_names if name not in inputs]
    return [f"the exporter dropped unused input(s) {', '.join(dropped)}"] if dropped else []
