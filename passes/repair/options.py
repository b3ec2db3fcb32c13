"""Shared by the reduced-precision passes: convert, and when asked, repair against the gate."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from passes._support.onnx_io import files_bytes
from passes.repair.budget import RepairBudget
from passes.repair.builds import Builds, Convert, build_processes
from passes.repair.search import Conversion, GateCheck, RepairStrategy, repair
from pipeline.core.artifact import Format
from pipeline.engine.pass_api import Pass, PassConfig, PassContext
from pipeline.model.inputs import DEFAULT_CORPUS

log = logging.getLogger(__name__)


class RepairOptions(PassConfig):
    """Options every reduced-precision pass shares."""

    repair: bool = Field(default=False, description="When the conversion fails the parity gate, keep the nodes "
                                                    "that add the most error in float until it passes.")
    repair_rounds: int = Field(default=6, ge=1, le=20, description="Rounds of repair, each keeping twice as many "
                                                                   "more nodes in float.")
    repair_patience: int = Field(default=2, ge=1, le=20, description="Rounds in a row that may end without "
                                 "raising the best min cosine reached before the repair gives up (reported).")
    repair_max_fraction: float = Field(default=0.5, gt=0, le=1, description="Most of the candidate nodes that may "
                                       "stay in float; past it the artifact fails its gate instead of becoming "
                                       "mostly higher precision under a reduced-precision name.")


class RepairingPass(Pass):
    """A reduced-precision pass that can repair itself against the parity gate (``repair: true``)."""

    config: RepairOptions

    @property
    def uses_gate(self) -> bool:
        """With repair on, the step runs the gate: the reference and the tolerances join its cache key."""
        return self.config.repair


MODEL_FILES = {Format.ONNX: "model.onnx", Format.OPENVINO: "model.xml"}


def _copy_model(source: Path, out_dir: Path) -> None:
    """Copy a build's model file and the weights beside it (model.onnx.data, model.bin) into ``out_dir``."""
    for path in source.parent.iterdir():
        if path.name.startswith(source.stem + "."):
            shutil.copy2(path, out_dir / path.name)


def convert_with_repair(ctx: PassContext, parent: Path, out_dir: Path, precision: str, convert: Convert,
                        candidates: dict[str, str], options: RepairOptions, strategy: RepairStrategy,
                        fmt: Format = Format.ONNX, parallel: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Write ``out_dir/model.onnx`` (``model.xml`` for OpenVINO); with ``options.repair``, the first
    build that passes the gate, the nodes kept in float (``candidates``: name -> op type) chosen by
    ``strategy`` (passes.repair.strategies) within the options' budget. With ``parallel`` (``convert``
    is a module-level function or class instance, and runs on one core), the builds of a ranking and
    of each forward-selection round run in worker processes, one per core (passes.repair.builds).

    Returns (stats, warnings): the repair report when it ran, and a warning when it could not pass.
    """
    target = out_dir / MODEL_FILES[fmt]
    if not options.repair:
        convert(target, [])
        return {}, []
    if ctx.gate is None:
        convert(target, [])
        return {}, ["repair asked for, but no reference is at hand (the pass ran outside a recipe run)"]
    seq = min(128, getattr(ctx.model, "max_positions", None) or 128)
    check = GateCheck(ctx.gate, precision, probe=ctx.calibration_inputs(DEFAULT_CORPUS, 1, 16)[0],
                      timing_inputs=ctx.sample_inputs(1, seq))
    budget = RepairBudget.from_options(options, len(candidates))
    processes = build_processes(files_bytes(parent)) if parallel else 1
    with tempfile.TemporaryDirectory(prefix="repair-") as scratch, \
            Builds(convert, Path(scratch), MODEL_FILES[fmt], processes) as builds:
        path, report = repair(Conversion(parent, builds, candidates, fmt), check, strategy, budget)
        _copy_model(path, out_dir)
    warnings = [] if report.passed else [
        f"repair: still fails the gate with {len(report.kept)} nodes kept in float "
        f"({report.history[-1]['failures'][:1]}){'; ' + report.stopped if report.stopped else ''}"]
    return {"repair": report.to_json()}, warnings
