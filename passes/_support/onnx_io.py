"""Small helpers the passes share: ONNX files in and out, running them, comparing outputs.

Every pass checks what it wrote numerically, at the export shape and at a second shape that
differs from it (so a dimension baked in at export shows up as a failure, not as a surprise
in production). The shapes, the eager reference and the comparison live here.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.artifact import Artifact, Precision
from pipeline.core.errors import first_line
from pipeline.engine.pass_api import Inputs, IOSpec, PassContext
from pipeline.runtime.runner import run_module, run_onnx

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31  # one serialized ModelProto cannot be larger than this
EXTERNAL_THRESHOLD = 1_800_000_000  # above this many weight bytes, weights go to a .data file


# -- files ---------------------------------------------------------------------------------------
def model_file(parent: Artifact, pass_name: str, fp32: bool = False) -> Path:
    """The parent artifact's model file; ValueError when it has none, or (``fp32``) when it is not fp32."""
    if parent.path is None:
        raise ValueError(f"{parent.step_folder} has no model file")
    if fp32 and parent.precision is not Precision.FP32:
        raise ValueError(f"{pass_name} takes fp32 models; {parent.step_folder} is {parent.precision}")
    return parent.path


def load_model(path: Path, with_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; its external data (if any) is read from beside the file."""
    import onnx

    return onnx.load(str(path), load_external_data=with_data)


def save_model(model: onnx.ModelProto, path: Path, external: bool) -> list[Path]:
    """Write ``model`` to ``path`` (weights in ``<name>.data`` beside it when ``external``).

    Returns the files written. Raises ValueError when the model is too large to be stored
    without external data.
    """
    import onnx

    path = Path(path)
    if external:
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data] if data.exists() else [path]
    if weight_bytes(model) >= PROTOBUF_LIMIT:
        raise ValueError(f"{path.name}: the model holds over 2 GB of weights; it needs external data")
    onnx.save_model(model, str(path))
    return [path]


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers held in the proto (external ones count their recorded length)."""
    import onnx

    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            total += int(info.get("length", 0))
        else:
            total += tensor.ByteSize()
    return total


def op_counts(model: onnx.ModelProto, op_types: tuple[str, ...]) -> dict[str, int]:
    """How many nodes of each of ``op_types`` the model holds (zeros left out), by op type."""
    return dict(sorted(Counter(node.op_type for node in model.graph.node if node.op_type in op_types).items()))


def files_bytes(path: Path) -> int:
    """Size of a model file plus any ``.data`` file beside it."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any initializer of the (structure-only) model lives in an external file."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


# -- graph facts --------------------------------------------------------------------------------
def op_histogram(model: onnx.ModelProto, top: int | None = None) -> dict[str, int]:
    """Count of each op type in the main graph (``domain::Op`` outside the default domain)."""
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                     for n in model.graph.node)
    return dict(counts.most_common(top))


def opset(model: onnx.ModelProto) -> int | None:
    """The model's opset of the default ONNX domain."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


# -- running and comparing ------------------------------------------------------------------------

def run_checked(path: Path, inputs: Inputs) -> dict[str, np.ndarray]:
    """``run_onnx``, with a failure at runtime turned into a message that names the shape."""
    try:
        return run_onnx(path, inputs)
    except ValueError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RuntimeError(f"{Path(path).name} fails in onnxruntime at shape {shape_text(inputs)} ({first_line(exc)}); "
                           f"a dimension was probably baked in") from exc


def max_abs_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Largest |a - b|; with ``mask`` (batch, seq), only over positions where it is nonzero.

    The mask applies only to arrays whose leading dims are the mask's shape. Raises ValueError
    when the shapes differ (a sign that an axis was baked in).
    """
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} != expected {tuple(b.shape)}")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if mask is not None and diff.shape[: mask.ndim] == mask.shape:
        diff = diff[mask.astype(bool)]
    if diff.size == 0:
        return 0.0
    return float("nan") if np.isnan(diff).any() else float(diff.max())


def check_outputs_close(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], names: Sequence[str],
            tolerance: float, what: str) -> float:
    """Max abs difference over the named outputs; ValueError on a shape mismatch, NaN or excess."""
    worst = 0.0
    for name in names:
        if name not in got:
            raise ValueError(f"{what}: output {name!r} is missing (got {', '.join(got)})")
        try:
            diff = max_abs_diff(np.asarray(got[name]), np.asarray(want[name]))
        except ValueError as exc:
            raise ValueError(f"{what}: output {name!r}: {exc}; an axis was probably baked in") from None
        if not diff <= tolerance:  # also catches NaN
            raise ValueError(f"{what}: output {name!r} differs by {diff:.3g} (tolerance {tolerance:g})")
        worst = max(worst, diff)
    return worst


def shapes_to_check(io: IOSpec, max_positions: int | None) -> list[tuple[int, int]]:
    """(batch, seq) pairs to check an artifact at: the export shape and one that differs in both."""
    seq = io.export_seq
    limit = max_positions or 10**9
    other = next((s for s in (2 * seq + 3, seq + 7, seq // 2, seq - 1) if 1 <= s <= limit and s != seq), seq)
    return [(io.export_batch, seq), (io.export_batch + 1, other)]


def max_positions(ctx: PassContext) -> int | None:
    """The model's longest sequence (None when it has no limit)."""
    return ctx.model.loaded_max_positions


def inputs_to_check(ctx: PassContext) -> list[Inputs]:
    """Sample inputs at each of ``shapes_to_check`` (a factory model may keep its own sequence length)."""
    return [ctx.sample_inputs(batch, seq) for batch, seq in shapes_to_check(ctx.io, max_positions(ctx))]


def fresh_reference(ctx: PassContext) -> tuple[Any, list[Inputs], list[dict[str, np.ndarray]]]:
    """A freshly loaded model, the check inputs, and its outputs on them: taken before anything
    exports or compiles, since an export can disturb the module it traces."""
    reference = ctx.model.load()
    inputs = [ctx.sample_inputs(batch, seq) for batch, seq in shapes_to_check(ctx.io, reference.max_positions)]
    return reference, inputs, [run_module(reference.module, x, ctx.io.input_names, ctx.io.output_names) for x in inputs]


def check_at_shapes(run: Callable[[Inputs], Mapping[str, np.ndarray]], label: str, inputs: list[Inputs],
                    expected: list[dict[str, Any]], names: Sequence[str], tolerance: float) -> list[float]:
    """Run an artifact at each check shape and compare it with eager; the max abs difference of each."""
    diffs = []
    for x, want in zip(inputs, expected, strict=True):
        what = f"{label} at shape {shape_text(x)}"
        diffs.append(check_outputs_close(run(x), want, names, tolerance, what))
        log.debug("%s: max abs diff %.3g", what, diffs[-1])
    return diffs


def count_tracer_warnings(caught: list[warnings.WarningMessage]) -> int:
    """Log the warnings an export or a trace raised (first lines, once each); return how many were
    TracerWarnings."""
    import torch

    for text in dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught):
        log.debug("%s", text)
    return sum(1 for w in caught if issubclass(w.category, torch.jit.TracerWarning))


def shape_text(inputs: Inputs) -> str:
    """'batch x seq' of a dict of inputs, for messages."""
    first = next(iter(inputs.values()))
    return " x ".join(str(d) for d in first.shape)
