"""Eager model -> TorchScript (torch.jit.trace or torch.jit.script), saved as model.pt.

A trace records the operations run on one example, so anything the model decides in Python
(a shape turned into an int, a branch on a value) is frozen at the example's values. The pass
therefore reloads the saved file and compares it with a fresh eager model at the export shape
and at a second, different shape; a trace that baked in a shape fails here, not in production.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from passes._support.onnx_io import check_at_shapes, count_tracer_warnings, fresh_reference, shape_text
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.core.errors import described, first_line
from pipeline.engine.pass_api import Inputs, Pass, PassConfig, PassContext, PassOutput
from pipeline.runtime.loaders import load_torchscript
from pipeline.runtime.runner import run_module

if TYPE_CHECKING:  # torch is imported where it runs, so that listing passes needs none
    import torch

log = logging.getLogger(__name__)

FILE = "model.pt"


class TorchScriptConfig(PassConfig):
    """Options of the torchscript pass."""

    mode: Literal["trace", "script"] = Field(
        default="trace",
        description="'trace' records one run on example inputs; 'script' compiles the Python source "
                    "(most Hugging Face models cannot be scripted).",
    )
    freeze: bool = Field(
        default=False,
        description="Apply torch.jit.freeze: inline weights and attributes as constants and fold them "
                    "(inference only; the file can no longer be fine-tuned).",
    )
    strict: bool = Field(
        default=True,
        description="Trace mode only: require tensor or tuple outputs. Set false for a module that "
                    "returns lists or dicts (their structure is then recorded as constant).",
    )
    tolerance: float = Field(
        default=1e-4, gt=0, description="Largest absolute difference from the eager model allowed in the check."
    )


class TorchScriptPass(Pass):
    """Compile the eager model to TorchScript and check the saved file against eager."""

    name = "torchscript"
    consumes = frozenset({Format.EAGER})
    produces = Format.TORCHSCRIPT
    Config = TorchScriptConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        cfg: TorchScriptConfig = self.config  # type: ignore[assignment]
        if parent.format is not Format.EAGER:
            raise ValueError(f"torchscript reads the eager model, not a {parent.format.value} artifact")
        reference, inputs, expected = fresh_reference(ctx)
        del reference

        module = ctx.model.load().module.eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = self._compile(module, inputs[0], ctx, cfg)
        tracer_warnings = count_tracer_warnings(caught)
        path = out_dir / FILE
        loaded = _save_and_reload(compiled, path)
        diffs = check_at_shapes(lambda x: _run_saved(loaded, path.name, x, ctx), path.name, inputs, expected,
                                ctx.io.output_names, cfg.tolerance)
        stats: dict[str, Any] = {
            **graph_stats(loaded),
            "tracer_warnings": tracer_warnings,
            "check": [{"shape": shape_text(x), "max_abs_diff": d} for x, d in zip(inputs, diffs, strict=True)],
        }
        meta = {"precision": Precision.FP32, "mode": cfg.mode, "frozen": cfg.freeze}
        return PassOutput(file=FILE, meta=meta, stats=stats)

    def _compile(self, module: torch.nn.Module, example: Inputs, ctx: PassContext,
                 cfg: TorchScriptConfig) -> torch.jit.ScriptModule:
        """Trace or script ``module``, then freeze it when asked."""
        import torch

        if cfg.mode == "script":
            compiled = _script(module)
        else:
            args = tuple(torch.from_numpy(example[name]) for name in ctx.io.input_names)
            with torch.no_grad():
                compiled = torch.jit.trace(module, args, strict=cfg.strict, check_trace=False)
        if cfg.freeze:
            compiled = torch.jit.freeze(compiled.eval())
        return compiled


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """torch.jit.script, with a clear error (and no silent fallback to tracing) when it fails."""
    import torch

    try:
        return torch.jit.script(module)
    except Exception as exc:  # the scripting frontend raises many unrelated types
        raise RuntimeError(
            f"scripting is not supported for this model ({described(exc)}); use mode: trace"
        ) from exc


def _save_and_reload(compiled: torch.jit.ScriptModule, path: Path) -> torch.jit.ScriptModule:
    """torch.jit.save, then a load of the file as verification loads it: what is checked is what was written."""
    import torch

    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript as a whole; choosing this pass is choosing it.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        torch.jit.save(compiled, str(path))
    return load_torchscript(path, map_location="cpu")


def _run_saved(loaded: torch.jit.ScriptModule, file: str, inputs: Inputs, ctx: PassContext) -> dict[str, Any]:
    """The reloaded file's outputs, with a failure turned into a message that names the shape."""
    try:
        return run_module(loaded, inputs, ctx.io.input_names, ctx.io.output_names)
    except Exception as exc:
        raise RuntimeError(f"{file} at shape {shape_text(inputs)} fails to run ({first_line(exc)}); the trace "
                           f"probably baked in the export shape") from exc


def graph_stats(module: torch.jit.ScriptModule, top: int = 10) -> dict[str, Any]:
    """Node count of the inlined forward graph and its most frequent node kinds."""
    graph = getattr(module, "inlined_graph", None) or module.graph
    kinds = Counter(node.kind() for node in graph.nodes())
    return {"graph_nodes": sum(kinds.values()), "op_histogram": dict(kinds.most_common(top))}
