"""Where does a reduced-precision model's error start? Run it and its fp32 parent with every
intermediate tensor exposed, match tensors by name, and rank the nodes by the error they add.

A node's added error is the drop in SQNR (dB) from its worst float input to its output, both
measured against the parent's same tensors; the first node in topological order whose output
falls below the cosine threshold is where the error starts.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.model.inputs import Inputs
from pipeline.runtime.sessions import onnx_session
from pipeline.verify.metrics import compare, kept_rows

if TYPE_CHECKING:  # onnx is imported where it runs, so listing passes stays fast
    import onnx

FLOAT_TYPES = {1, 10, 11}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE


@dataclass
class NodeError:
    """The error of one node's output against the parent, and what the node added."""

    node: str
    op_type: str
    tensor: str
    order: int
    cos_min: float
    sqnr_db: float
    added_db: float

    def to_json(self) -> dict[str, Any]:
        """Plain values for manifests and reports."""
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in self.__dict__.items()}


@dataclass
class Localization:
    """First failing node and the nodes that add the most error."""

    first: NodeError | None
    worst: list[NodeError] = field(default_factory=list)
    compared: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain values for manifests and reports."""
        return {"first": self.first.to_json() if self.first else None, "compared": self.compared,
                "worst": [n.to_json() for n in self.worst]}


def float_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of every float tensor a node produces (after shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    return {out: types[out] for node in model.graph.node for out in node.output if types.get(out) in FLOAT_TYPES}


def run_exposed(path: Path, inputs: Inputs, names: set[str]) -> dict[str, np.ndarray]:
    """Outputs of the model at ``path`` with the named intermediate (float) tensors added as graph outputs."""
    return run_exposed_batches(path, [inputs], names)[0]


def run_exposed_batches(path: Path, batches: list[Inputs], names: set[str], untyped_as_float: bool = False
                        ) -> list[dict[str, np.ndarray]]:
    """``run_exposed`` on each of ``batches``, with one session.

    Only float tensors whose type shape inference tells are added, unless ``untyped_as_float``:
    then a tensor it cannot type (the output of a contrib op) is added as float32.
    """
    import onnx

    model = onnx.load(str(path))
    types = float_tensors(model)
    if untyped_as_float:
        produced = {out for node in model.graph.node for out in node.output}
        types.update({name: onnx.TensorProto.FLOAT for name in names & produced if name not in types})
    present = {o.name for o in model.graph.output}
    for name in sorted(names & set(types) - present):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    with tempfile.TemporaryDirectory(prefix="localize-") as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        onnx.save_model(model, str(exposed), save_as_external_data=model.ByteSize() > 1_800_000_000)
        session = onnx_session(exposed, "cpu")
        wanted = [o.name for o in session.get_outputs()]
        results = []
        for inputs in batches:
            values = session.run(wanted, {i.name: inputs[i.name] for i in session.get_inputs()})
            results.append(dict(zip(wanted, (np.asarray(v, dtype=np.float32) for v in values), strict=True)))
        return results


def token_rows(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Rows of kept tokens for the layouts inside a transformer: (B, S, ...), (B*S, ...), (B, heads, S, ...)."""
    if mask is None or value.ndim == 0:
        return kept_rows(value, mask)
    batch, seq = mask.shape
    if value.shape[0] == batch * seq and value.shape[:2] != mask.shape:
        keep = mask.reshape(-1).astype(bool)  # tokens flattened into one axis, as around a Gemm
        return value[keep].reshape(int(keep.sum()), -1)
    if value.shape[0] == batch and value.ndim >= 3 and value.shape[1] != seq and seq in value.shape[2:]:
        axis = 2 + value.shape[2:].index(seq)  # heads before tokens, as inside attention
        value = np.moveaxis(value, axis, 1)
    return kept_rows(value, mask)


def tensor_error(ref: np.ndarray, out: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """(min cosine, SQNR dB) of one tensor against its reference, over the tokens the mask keeps."""
    if ref.shape != out.shape:
        return -1.0, -math.inf
    a, b = token_rows(ref, mask), token_rows(out, mask)
    a, b = a.astype(np.float64), b.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # identical infinities (attention masks) are no error
    a, b = np.where(same & ~np.isfinite(a), 0.0, a), np.where(same & ~np.isfinite(b), 0.0, b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # an infinity or NaN on one side only: the worst
        return -1.0, -math.inf
    metrics = compare(a, b, None)
    return metrics["cos_min"], metrics["sqnr_db"]


def added_db(before: float, after: float) -> float:
    """SQNR lost across a node; an exact input counts as 200 dB, an exact output adds nothing."""
    if after == math.inf:
        return 0.0
    if after == -math.inf:
        return math.inf if before > -math.inf else 0.0
    return min(before, 200.0) - after


def localize(reduced: Path, parent: Path, inputs: Inputs, cos_threshold: float = 0.999, top: int = 10
             ) -> Localization:
    """Compare every tensor the two models share; find the first bad node and the worst offenders."""
    import onnx

    parent_model = onnx.load(str(parent), load_external_data=False)
    names = set(float_tensors(onnx.load(str(parent))))
    want, got = run_exposed(parent, inputs, names), run_exposed(reduced, inputs, names)
    mask = inputs.get("attention_mask")
    errors: dict[str, tuple[float, float]] = {}
    for name in want.keys() & got.keys():
        errors[name] = tensor_error(want[name], got[name], mask)
    nodes: list[NodeError] = []
    for order, node in enumerate(parent_model.graph.node):
        out = next((o for o in node.output if o in errors), None)
        if out is None:
            continue
        cos, sqnr = errors[out]
        inputs_sqnr = [errors[i][1] for i in node.input if i in errors]
        before = min(inputs_sqnr, default=math.inf)
        added = added_db(before, sqnr)
        nodes.append(NodeError(node.name, node.op_type, out, order, cos, sqnr, added))
    first = next((n for n in nodes if n.cos_min < cos_threshold), None)
    worst = sorted(nodes, key=lambda n: n.added_db, reverse=True)[:top]
    return Localization(first=first, worst=worst, compared=len(errors))


def rank_nodes(reduced: Path, parent: Path, inputs: Inputs, candidates: set[str]) -> list[NodeError]:
    """Candidate nodes (by name in the parent) ordered by the error they add, most first."""
    result = localize(reduced, parent, inputs, top=10**6)
    return [n for n in result.worst if n.node in candidates]
