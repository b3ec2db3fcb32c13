"""Parity of every artifact against eager PyTorch, the gate, and blame (which pass added the error)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.metrics import combine, compare
from pipeline.reference import Case
from pipeline.runtime import ModelFn, Outputs

log = logging.getLogger(__name__)
MASK = "attention_mask"


@dataclass
class Parity:
    """Verdict of one artifact: its metrics per output, the tolerance, and what missed."""

    passed: bool
    metrics: dict[str, dict[str, Any]]
    tolerance: dict[str, float]
    failures: list[str] = field(default_factory=list)
    exempt: bool = False
    vs_parent: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``parity`` entry of report.json."""
        out: dict[str, Any] = {"passed": self.passed, "metrics": self.metrics, "tolerance": self.tolerance,
                               "failures": self.failures, "vs_parent": self.vs_parent}
        if self.exempt:
            out["exempt"] = True
        return out


def run_cases(fn: ModelFn, cases: list[Case]) -> list[Outputs]:
    """Outputs of a model on every reference case, in order."""
    return [fn(case.inputs) for case in cases]


def _metrics(cases: list[Case], expected: list[Outputs], actual: list[Outputs], classification: bool
             ) -> dict[str, dict[str, Any]]:
    per_output: dict[str, list[dict[str, Any]]] = {}
    for case, ref, out in zip(cases, expected, actual, strict=True):
        mask = case.inputs.get(MASK)
        for name, value in ref.items():
            if name not in out:
                per_output.setdefault(name, []).append({"shape_mismatch": "missing output", "max_abs": math.inf})
                continue
            per_output.setdefault(name, []).append(compare(value, out[name], mask, classification))
    return {name: combine(values) for name, values in per_output.items()}


def failures(metrics: dict[str, dict[str, Any]], max_abs: float, min_cosine: float) -> list[str]:
    """Each way the metrics miss the tolerance, as 'output metric value vs bound (by how much)'."""
    missed = []
    for name, m in metrics.items():
        if "shape_mismatch" in m:
            missed.append(f"{name}: shape {m['shape_mismatch']}")
            continue
        for bad in ("nan", "inf"):
            if m.get(bad):
                missed.append(f"{name}: {m[bad]} {bad.upper()} values")
        if m["max_abs"] > max_abs:
            missed.append(f"{name}: max_abs {m['max_abs']:.3g} > {max_abs:.3g} (by {m['max_abs'] - max_abs:.3g})")
        if m["cos_min"] < min_cosine:
            missed.append(f"{name}: cos_min {m['cos_min']:.6f} < {min_cosine:.6f} "
                          f"(by {min_cosine - m['cos_min']:.3g})")
    return missed


def check(cases: list[Case], actual: list[Outputs], parent: list[Outputs] | None, max_abs: float,
          min_cosine: float, classification: bool = False, exempt: bool = False) -> Parity:
    """Compare an artifact's outputs with eager (the gate) and with its parent artifact (blame)."""
    eager = [case.outputs for case in cases]
    metrics = _metrics(cases, eager, actual, classification)
    missed = failures(metrics, max_abs, min_cosine)
    vs_parent = _metrics(cases, parent, actual, classification) if parent is not None else {}
    return Parity(passed=not missed, metrics=metrics, tolerance={"max_abs": max_abs, "min_cosine": min_cosine},
                  failures=missed, exempt=exempt, vs_parent=vs_parent)


def blame(parities: dict[str, Parity], parents: dict[str, str]) -> dict[str, Any] | None:
    """The step that added the most error over its parent (largest max_abs against its parent)."""
    worst: tuple[float, str, str] | None = None
    for step, parity in parities.items():
        for output, m in parity.vs_parent.items():
            added = m.get("max_abs", 0.0)
            if worst is None or added > worst[0]:
                worst = (added, step, output)
    if worst is None:
        return None
    added, step, output = worst
    return {"step": step, "parent": parents.get(step), "output": output, "max_abs_added": added}
