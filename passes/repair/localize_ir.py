"""Which MatMuls of a reduced-precision OpenVINO IR harm the most, each alone? From one build: for each
candidate, every activation quantizer of the build but the candidate's own is bypassed (weights stay
as built), and the final outputs are compared with the same build with every activation quantizer
bypassed, so that only the candidate's own quantization differs.

This stands in for quantizing each candidate alone, one NNCF build each (36 on MiniLM, about 160 s
here; this takes a compile and an inference per candidate, about 8 s with two at once). Cheaper rankings failed on
MiniLM: by the error a node adds on top of its inputs (as passes.repair.localize does for ONNX) the
value projections came first and 18 kept in float never passed the gate; by each node's local error
fed the parent's inputs, the last layers' feed-forward outputs ranked low, and on random tokens the
output reached min cosine 0.95 where the ranking alone reached 0.985.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from passes.repair.builds import MAX_PROCESSES
from passes.repair.localize import tensor_error
from pipeline.core.limits import usable_cores
from pipeline.model.inputs import Inputs
from pipeline.runtime.sessions import OPENVINO_CONFIG

Port = tuple[str, int]  # (friendly name of the producing operation, output index)
MAX_INSERTED = 8  # operations a quantizer may put between a producer and the candidate it feeds


def variable_ops(model: Any) -> set[str]:
    """The friendly names of the operations of ``model`` that depend on an input (a Parameter); the
    others compute from constants alone (weights, and their decompression). One pass in topological
    order, where a recursive walk up each operation would be as deep as the model."""
    variable: set[str] = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter" or any(
                port.get_source_output().get_node().get_friendly_name() in variable for port in op.inputs()):
            variable.add(op.get_friendly_name())
    return variable


def activation_sources(model: Any, names: set[str]) -> dict[str, list[Port]]:
    """For each named operation of ``model`` (the fp32 parent), the ports that feed it activations
    (inputs that are not computed from constants)."""
    variable = variable_ops(model)
    feeds: dict[str, list[Port]] = {}
    for op in model.get_ordered_ops():
        if op.get_friendly_name() in names:
            sources = [port.get_source_output() for port in op.inputs()]
            feeds[op.get_friendly_name()] = [(s.get_node().get_friendly_name(), s.get_index()) for s in sources
                                             if s.get_node().get_friendly_name() in variable]
    return feeds


def inserted_chain(op: Any, source: Port, variable: set[str], depth: int = MAX_INSERTED) -> list[Any] | None:
    """The operations a quantizer put between the output ``source`` and ``op`` (a path up the inputs
    among the ``variable`` operations), nearest ``op`` first; None when ``source`` is not found within
    ``depth`` steps."""
    for port in op.inputs():
        upstream = port.get_source_output()
        if (upstream.get_node().get_friendly_name(), upstream.get_index()) == source:
            return []
    if depth == 0:
        return None
    for port in op.inputs():
        node = port.get_source_output().get_node()
        if node.get_friendly_name() not in variable:
            continue
        rest = inserted_chain(node, source, variable, depth - 1)
        if rest is not None:
            return [node, *rest]
    return None


def quantize_only(model: Any, name: str | None, sources: list[Port]) -> bool:
    """Leave in ``model`` (a reduced ov.Model, changed in place) only the activation quantizers in
    front of the operation ``name`` (None: none at all): every other FakeQuantize of an activation
    is bypassed, for every consumer outside that chain (one NNCF shares between the Q, K and V
    projections included). SmoothQuant's scaling stays, which is exact in float. False when ``name``
    or its chain is not found."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    if name is not None and name not in ops:
        return False
    variable = variable_ops(model)
    chains = [inserted_chain(ops[name], source, variable) for source in sources] if name is not None else []
    if any(chain is None for chain in chains):
        return False
    keep = {name, *(node.get_friendly_name() for chain in chains if chain for node in chain)}
    for op in ops.values():
        if op.get_type_name() != "FakeQuantize" or op.get_friendly_name() not in variable:
            continue
        data = op.input(0).get_source_output()
        for port in list(op.output(0).get_target_inputs()):
            if op.get_friendly_name() not in keep or port.get_node().get_friendly_name() not in keep:
                port.replace_source_output(data)
    return True


def outputs(model: Any, probes: list[Inputs]) -> list[list[np.ndarray]]:
    """Every output of ``model`` (an ov.Model) on each of ``probes``, compiled once, as the Runner
    compiles an IR."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", dict(OPENVINO_CONFIG))
    request = compiled.create_infer_request()
    values = []
    for probe in probes:
        result = request.infer({port.get_any_name(): np.ascontiguousarray(probe[port.get_any_name()])
                                for port in compiled.inputs})
        values.append([np.asarray(result[port], dtype=np.float32).copy() for port in compiled.outputs])
    return values


def rank_by_own_harm(reduced: Path, parent: Path, probes: list[Inputs], candidates: set[str],
                     op_types: dict[str, str]) -> list[dict[str, Any]]:
    """The candidates as rows ("node", "op_type", "sqnr_db", "cos_min"): the final outputs' error
    with only that candidate's activations quantized in the reduced IR, against the same IR with
    none of them quantized (so the weights' own error, the same in every row, does not mask the
    differences), the worst over ``probes``, most harmful first: lowest min cosine, which the gate
    judges (by SQNR, MiniLM's fifth feed-forward output ranked 15th, and 18 in float never passed);
    a candidate that cannot be isolated is ranked last. Probe with real text and with random tokens:
    on MiniLM the last layers' feed-forward outputs harm only the second."""
    import openvino as ov

    core = ov.Core()
    feeds = activation_sources(core.read_model(str(parent)), candidates)
    weights_only = core.read_model(str(reduced))
    quantize_only(weights_only, None, [])
    references = outputs(weights_only, probes)

    def own_harm(name: str) -> tuple[float, float, str] | None:
        model = core.read_model(str(reduced))
        if not quantize_only(model, name, feeds.get(name, [])):
            return None
        errors = [tensor_error(want, got, probe.get("attention_mask"))
                  for probe, reference, values in zip(probes, references, outputs(model, probes), strict=True)
                  for want, got in zip(reference, values, strict=True)]
        return min(sqnr for _, sqnr in errors), min(cos for cos, _ in errors), name

    # compiling dominates and releases the GIL: one candidate per core at once (12.5 s -> 8 s on 2 cores)
    with ThreadPoolExecutor(min(usable_cores(), MAX_PROCESSES)) as pool:
        found = dict(zip(sorted(candidates), pool.map(own_harm, sorted(candidates)), strict=True))
    harms = sorted((harm for harm in found.values() if harm is not None), key=lambda harm: (harm[1], harm[0]))
    lost = [{"node": name, "op_type": op_types.get(name, "?"), "sqnr_db": None, "cos_min": None}
            for name, harm in found.items() if harm is None]
    return [{"node": name, "op_type": op_types.get(name, "?"), "sqnr_db": plain(sqnr), "cos_min": round(cos, 6)}
            for sqnr, cos, name in harms] + lost


def plain(db: float) -> float | str:
    """A dB figure for a manifest: rounded, or 'inf' (no error at all; JSON has no infinities)."""
    return round(db, 2) if math.isfinite(db) else str(db)
