"""Shared by the reduced-precision passes: convert, and when asked, repair against the gate."""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from pydantic import Field

from pipeline.inputs import DEFAULT_CORPUS
from pipeline.pass_base import PassConfig, PassContext
from pipeline.repair import repair

log = logging.getLogger(__name__)
Convert = Callable[[Path, list[str]], None]  # (target file, node names kept in float) -> writes target


class RepairOptions(PassConfig):
    """Options every reduced-precision pass shares."""

    repair: bool = Field(default=False, description="When the conversion fails the parity gate, keep the nodes "
                                                    "that add the most error in float until it passes.")
    repair_rounds: int = Field(default=6, ge=1, le=20, description="Rounds of repair, each keeping twice as many "
                                                                   "more nodes in float.")
    repair_max_fraction: float = Field(default=0.5, gt=0, le=1, description="Most of the candidate nodes that may "
                                       "stay in float; past it the artifact fails its gate instead of becoming "
                                       "mostly higher precision under a reduced-precision name.")


def _copy_model(source: Path, out_dir: Path) -> None:
    for path in source.parent.iterdir():
        if path.name == source.name or path.name.startswith(source.name + "."):
            shutil.copy2(path, out_dir / path.name)


def weight_nodes(model: onnx.ModelProto, op_types: set[str]) -> dict[str, str]:
    """Nodes of ``op_types`` that read a weight (an initializer): what quantization converts. Name -> op type."""
    weights = {t.name for t in model.graph.initializer}
    return {node.name: node.op_type for node in model.graph.node
            if node.op_type in op_types and any(i in weights for i in node.input)}


def exclusion_names(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Names to give onnxruntime's quantizer for nodes to keep in float.

    The quantizer splits a Gemm into '<name>_MatMul' and '<name>_Add' before it looks at the
    exclusion list, so a Gemm is excluded under its MatMul's name too.
    """
    gemms = {node.name for node in model.graph.node if node.op_type == "Gemm"}
    return [alias for name in names for alias in ((name, f"{name}_MatMul") if name in gemms else (name,))]


def convert_with_repair(ctx: PassContext, parent: Path, out_dir: Path, precision: str, convert: Convert,
                        candidates: dict[str, str], options: RepairOptions,
                        method: str = "sensitivity") -> tuple[dict[str, Any], list[str]]:
    """Write ``out_dir/model.onnx``; with ``options.repair``, the first build that passes the gate.

    Returns (stats, warnings): the repair report when it ran, and a warning when it could not pass.
    """
    target = out_dir / "model.onnx"
    if not options.repair:
        convert(target, [])
        return {}, []
    if ctx.gate is None:
        convert(target, [])
        return {}, ["repair asked for, but no reference is at hand (the pass ran outside a recipe run)"]
    seq = min(128, getattr(ctx.model, "max_positions", None) or 128)
    probe = ctx.calibration_inputs(DEFAULT_CORPUS, 1, 16)[0]
    with tempfile.TemporaryDirectory(prefix="repair-") as scratch:
        counter = itertools.count()

        def build(kept: list[str]) -> Path:
            attempt = Path(scratch) / f"attempt{next(counter)}" / "model.onnx"
            attempt.parent.mkdir()
            convert(attempt, kept)
            return attempt

        path, report = repair(build, parent, precision, ctx.gate, set(candidates), probe, ctx.sample_inputs(1, seq),
                              options.repair_rounds, op_types=candidates, method=method,
                              max_kept=max(1, int(options.repair_max_fraction * len(candidates))))
        _copy_model(path, out_dir)
    warnings = [] if report.passed else [
        f"repair: still fails the gate with {len(report.kept)} nodes kept in float "
        f"({report.history[-1]['failures'][:1]})"]
    return {"repair": report.to_json()}, warnings
