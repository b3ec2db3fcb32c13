"""Eager model -> torch.export ExportedProgram, saved as model.pt2 (TorchScript's successor).

The declared dynamic axes become ``torch.export.Dim``s (one per axis name, so inputs that share an
axis share a Dim), from 1 up to the model's longest sequence for a sequence axis. As with
TorchScript, the saved file is loaded back and compared with a fresh eager model at the export
shape and at a different one.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from passes._support.onnx_io import check_at_shapes, fresh_reference, max_positions, shape_text
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import IOSpec, Pass, PassConfig, PassContext, PassOutput
from pipeline.runtime.loaders import load_exported
from pipeline.runtime.runner import run_module

if TYPE_CHECKING:  # torch is imported where it runs, so that listing passes needs none
    import torch

log = logging.getLogger(__name__)

FILE = "model.pt2"
MAX_BATCH = 4096


class TorchExportConfig(PassConfig):
    """Options of the torch_export pass."""

    strict: bool = Field(
        default=False, description="torch.export's strict mode (traces with TorchDynamo; fewer models pass)."
    )
    tolerance: float = Field(
        default=1e-4, gt=0, description="Largest absolute difference from the eager model allowed in the check."
    )


class TorchExportPass(Pass):
    """Export the eager model with torch.export and check the saved program against eager."""

    name = "torch_export"
    consumes = frozenset({Format.EAGER})
    produces = Format.TORCH_EXPORT
    Config = TorchExportConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        import torch

        cfg: TorchExportConfig = self.config  # type: ignore[assignment]
        if parent.format is not Format.EAGER:
            raise ValueError(f"torch_export reads the eager model, not a {parent.format.value} artifact")
        reference, inputs, expected = fresh_reference(ctx)
        del reference
        io = ctx.io
        module = ctx.model.load().module.eval()
        args = tuple(torch.from_numpy(inputs[0][name]) for name in io.input_names)
        shapes = dynamic_shapes(io, max_positions(ctx))
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=shapes, strict=cfg.strict)
        path = out_dir / FILE
        torch.export.save(program, str(path))
        loaded = load_exported(path)  # as verification and the benchmark load it: nothing in it runs
        diffs = check_at_shapes(lambda x: run_module(loaded, x, io.input_names, io.output_names), path.name,
                                inputs, expected, io.output_names, cfg.tolerance)
        stats: dict[str, Any] = {
            "nodes": len(program.graph.nodes), "op_histogram": op_histogram(program, top=15),
            "file_bytes": path.stat().st_size, "strict": cfg.strict,
            "check": [{"shape": shape_text(x), "max_abs_diff": d} for x, d in zip(inputs, diffs, strict=True)],
        }
        log.info("torch_export: %d graph nodes", stats["nodes"])
        return PassOutput(file=FILE, meta={"precision": Precision.FP32, "torch": torch.__version__}, stats=stats)


def dynamic_shapes(io: IOSpec, longest: int | None) -> tuple[dict[int, Any] | None, ...]:
    """Positional dynamic_shapes for the wrapper's inputs: one Dim per axis name, shared across inputs."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    for axes in io.dynamic_axes.values():
        for label in axes.values():
            if label not in dims:
                top = longest if longest and "seq" in label else MAX_BATCH
                dims[label] = Dim(_identifier(label), min=1, max=top)
    return tuple({axis: dims[label] for axis, label in io.dynamic_axes[name].items()}
                 if name in io.dynamic_axes else None for name in io.input_names)


def _identifier(label: str) -> str:
    """A Dim name from an axis label (torch wants a Python identifier)."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in label)
    return cleaned if cleaned[:1].isalpha() else f"d_{cleaned}"


def op_histogram(program: torch.export.ExportedProgram, top: int | None = None) -> dict[str, int]:
    """Count of each operator the exported graph calls."""
    counts = Counter(str(node.target) for node in program.graph.nodes if node.op == "call_function")
    return dict(counts.most_common(top))

