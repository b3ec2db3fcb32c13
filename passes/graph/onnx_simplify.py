"""ONNX -> simplified ONNX with onnxsim (constant folding, shape inference, redundant-op removal).

No input shapes are given to onnxsim, so the dynamic axes stay dynamic (the manager checks it
after the step, with onnx.checker and the graph's names). Those checks prove only that the file
is well formed, so the pass also runs parent and result in onnxruntime on the same inputs, at
the export shape and a different one, and fails on any real difference.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from passes._support import onnx_io as ou
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import Inputs, Pass, PassConfig, PassContext, PassOutput

log = logging.getLogger(__name__)

FILE = "model.onnx"


class OnnxSimplifyConfig(PassConfig):
    """Options of the onnx_simplify pass."""

    optimize: bool = Field(
        default=True,
        description="Run onnxsim's onnx-optimizer passes (fusions, eliminations) besides constant folding.",
    )
    skipped_optimizers: list[str] = Field(
        default_factory=list, description="Names of onnx-optimizer passes to leave out (e.g. fuse_bn_into_conv)."
    )
    skip_shape_inference: bool = Field(
        default=False, description="Skip shape inference (a workaround when it crashes on a model)."
    )
    tolerance: float = Field(
        default=1e-4, gt=0, description="Largest absolute difference from the parent allowed in the check."
    )


class OnnxSimplifyPass(Pass):
    """Simplify an ONNX model, keeping its dynamic axes and its outputs."""

    name = "onnx_simplify"
    consumes = frozenset({Format.ONNX})
    produces = Format.ONNX
    Config = OnnxSimplifyConfig

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        cfg: OnnxSimplifyConfig = self.config  # type: ignore[assignment]
        if parent.format is not Format.ONNX or parent.path is None:
            raise ValueError(f"onnx_simplify reads an ONNX file, not a {parent.format.value} artifact")
        before = ou.load_model(parent.path, with_data=False)
        path = out_dir / FILE
        self._simplify_to(parent.path, path, cfg, keep_external=ou.has_external_data(before))
        after = ou.load_model(path, with_data=False)
        diffs = check_numerics(parent.path, path, ou.inputs_to_check(ctx), cfg.tolerance)

        stats: dict[str, Any] = {
            "nodes_before": len(before.graph.node), "nodes_after": len(after.graph.node),
            "op_histogram": ou.op_histogram(after, top=15),
            "bytes_before": ou.files_bytes(parent.path), "file_bytes": ou.files_bytes(path),
            "external_data": ou.has_external_data(after), "opset": ou.opset(after),
            "check": diffs,
        }
        log.info("onnx_simplify: %d -> %d nodes", stats["nodes_before"], stats["nodes_after"])
        meta = {"precision": parent.precision, "opset": ou.opset(after)}
        return PassOutput(file=FILE, meta=meta, stats=stats)

    def _simplify_to(self, src: Path, path: Path, cfg: OnnxSimplifyConfig, keep_external: bool) -> None:
        """Simplify into a scratch folder, then store at ``path`` with our external-data layout."""
        scratch = path.parent / ".simplify"
        scratch.mkdir()
        try:
            simplify_file(src, scratch / FILE, cfg)
            model = ou.load_model(scratch / FILE)
            external = keep_external or ou.weight_bytes(model) > ou.EXTERNAL_THRESHOLD
            ou.save_model(model, path, external)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def simplify_file(src: Path, dst: Path, cfg: OnnxSimplifyConfig) -> None:
    """Run onnxsim from file to file (its path-based route handles models with external data)."""
    from onnxsim import simplify

    _, ok = simplify(
        str(src), output_path=str(dst), check_n=0, perform_optimization=cfg.optimize,
        skipped_optimizers=list(cfg.skipped_optimizers), skip_shape_inference=cfg.skip_shape_inference,
    )
    if not ok:
        raise RuntimeError("onnxsim reported that the simplified model failed its own check")


def check_numerics(parent: Path, child: Path, inputs: list[Inputs], tolerance: float) -> list[dict[str, Any]]:
    """Run parent and child in onnxruntime on the same inputs; raise if any output differs."""
    results = []
    for x in inputs:
        want = ou.run_checked(parent, x)
        what = f"simplified model at shape {ou.shape_text(x)}"
        diff = ou.check_outputs_close(ou.run_checked(child, x), want, list(want), tolerance, what)
        results.append({"shape": ou.shape_text(x), "max_abs_diff": diff})
        log.debug("%s: max abs diff %.3g", what, diff)
    return results
