"""Repair a reduced-precision conversion that fails its gate: keep the nodes that add the most error
in float, measured, until the gate passes or the rounds run out.

With few candidates (int8: the weight nodes), each round first tries every one of the most harmful
ones with the gate itself and keeps the best (a forward selection: on all-MiniLM-L6-v2 it passes
with 2 nodes in float where keeping the most harmful nodes by their own harm needed 11, because
harm does not add up node by node); when that does not pass within its rounds, more nodes are
kept in the order of their own harm, doubling each round, and the fewest that pass are bisected.

The conversion is rebuilt from the fp32 parent each round (``build`` takes the nodes to keep in
float and returns a new file), localised against the parent (ONNX), and checked with the step's own
gate. What stayed in higher precision, and what it cost in speed, is reported. Builds of any format
the Runner runs can be repaired (an OpenVINO IR, with NNCF's ignored scope as the nodes kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from passes.repair.localize import localize, rank_nodes
from pipeline.core.artifact import Format
from pipeline.engine.pass_api import Gate, GateResult
from pipeline.model.inputs import Inputs
from pipeline.runtime.engines import Engine, file_engine
from pipeline.runtime.runner import as_function
from pipeline.runtime.timing import Protocol, Timer, latencies, summarize, warm_up
from pipeline.verify.metrics import compare

log = logging.getLogger(__name__)
Build = Callable[[list[str]], Path]
BuildMany = Callable[[Sequence[list[str]]], Iterator[Path]]  # a build per list of nodes kept, in order
# (reduced build, parent, probe, candidates) -> candidates as rows ("node", ...), most harmful first
Rank = Callable[[Path, Path, Inputs, set[str]], list[dict[str, Any]]]
GREEDY_POOL = 8  # the most harmful candidates each forward-selection round tries
GREEDY_ROUNDS = 4


@dataclass
class RepairReport:
    """What the repair did: rounds, nodes kept in float, verdicts along the way, the speed cost."""

    passed: bool
    kept: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    localization: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # why the repair gave up before its rounds ran out

    def to_json(self) -> dict[str, Any]:
        """Plain values for the manifest's stats."""
        return {"passed": self.passed, "kept_in_float": self.kept, "history": self.history,
                "localization": self.localization, "speed": self.speed, "stopped": self.stopped}

    def best_cos(self) -> float:
        """The highest min cosine any build reached so far."""
        return max(h["cos_min"] for h in self.history)


def _verdict(result: GateResult, kept: int) -> dict[str, Any]:
    return {"kept_in_float": kept, "passed": result.passed, "cos_min": result.cos_min, "max_abs": result.max_abs,
            "failures": result.failures[:3]}


def candidate_engine(path: Path, fmt: Format, threads: int | None = None) -> Engine:
    """A candidate's engine on the CPU (ONNX or OpenVINO: files that name their inputs and outputs)."""
    return file_engine(fmt, path, ([], []), "cpu", threads)


def p50_ms(path: Path, inputs: Inputs, fmt: Format = Format.ONNX, threads: int = 2, repeats: int = 30) -> float:
    """Median latency of one model file on ``inputs`` (warmed up; for comparing two candidates)."""
    call = candidate_engine(path, fmt, threads).stage(inputs)
    protocol = Protocol(warmup=5, warmup_seconds=0, min_repeats=repeats, min_seconds=0)
    warm_up(call, Timer(), protocol)
    times = latencies(call, Timer(), protocol)
    return summarize(times, protocol.cv_threshold)["p50_ms"]


def outputs_of(path: Path, inputs: Inputs, fmt: Format) -> dict[str, np.ndarray]:
    """A model file's outputs on ``inputs``, by name, as float32."""
    engine = candidate_engine(path, fmt)
    return as_function(engine, engine.output_names)(inputs)


def _output_error(path: Path, probe: Inputs, reference: dict[str, np.ndarray], fmt: Format) -> tuple[float, float]:
    """(SQNR dB, min cosine) of a model's outputs on the probe against the parent's, over kept tokens."""
    mask = probe.get("attention_mask")
    worst_sqnr, worst_cos = float("inf"), 1.0
    for name, value in outputs_of(path, probe, fmt).items():
        m = compare(reference[name], value, mask)
        worst_sqnr, worst_cos = min(worst_sqnr, m["sqnr_db"]), min(worst_cos, m["cos_min"])
    return worst_sqnr, worst_cos


def one_by_one(build: Build) -> BuildMany:
    """``build`` as a BuildMany: each build made when the previous one has been used."""
    def many(kept_lists: Sequence[list[str]]) -> Iterator[Path]:
        return (build(kept) for kept in kept_lists)
    return many


def sensitivity(build_many: BuildMany, parent: Path, candidates: set[str], probe: Inputs,
                op_types: dict[str, str], fmt: Format = Format.ONNX) -> list[dict[str, Any]]:
    """Each candidate's own harm: convert that node alone, measure the output against the parent.

    Sorted most harmful first (lowest SQNR of the final outputs).
    """
    reference = outputs_of(parent, probe, fmt)
    rows = []
    nodes = sorted(candidates)
    for node, path in zip(nodes, build_many([sorted(candidates - {node}) for node in nodes]), strict=True):
        sqnr, cos = _output_error(path, probe, reference, fmt)
        rows.append({"node": node, "op_type": op_types.get(node, "?"), "sqnr_db": round(sqnr, 2),
                     "cos_min": round(cos, 6)})
    return sorted(rows, key=lambda row: row["sqnr_db"])


def _score(verdict: GateResult) -> tuple[bool, float]:
    return verdict.passed, verdict.cos_min


def _forward(build_many: BuildMany, gate: Gate, precision: str, order: list[dict[str, Any]], report: RepairReport,
             max_kept: int) -> tuple[Path | None, GateResult | None, dict[str, dict[str, Any]]]:
    """Forward selection: each round keeps in float the one candidate of the ``GREEDY_POOL`` most
    harmful whose build the gate likes best, until one passes or ``GREEDY_ROUNDS`` are done."""
    chosen: dict[str, dict[str, Any]] = {}
    best: tuple[Path, GateResult] | None = None
    for _ in range(min(GREEDY_ROUNDS, max_kept)):
        trials = []
        pool = [row for row in order if row["node"] not in chosen][:GREEDY_POOL]
        for row, path in zip(pool, build_many([[*chosen, row["node"]] for row in pool]), strict=True):
            trials.append((_score(verdict := gate(path, precision)), row, path, verdict))
        if not trials:
            break
        _, row, path, verdict = max(trials, key=lambda trial: trial[0])
        chosen[row["node"]] = row
        best = (path, verdict)
        report.history.append(_verdict(verdict, len(chosen)))
        log.info("repair: %d nodes kept in float (best of %d tries) -> cos_min %.5f, %s", len(chosen), len(trials),
                 verdict.cos_min, "passes" if verdict.passed else "still fails")
        if verdict.passed:
            break
    return (best[0], best[1], chosen) if best else (None, None, chosen)


def _fewest(build: Build, gate: Gate, precision: str, prefix: list[dict[str, Any]], order: list[dict[str, Any]],
            report: RepairReport, passing: int, path: Path, verdict: GateResult, chosen: dict[str, dict[str, Any]]
            ) -> tuple[Path, GateResult, dict[str, dict[str, Any]]]:
    """Bisect the fixed harm order after ``prefix`` for the fewest nodes in float that still pass
    (fewer is faster)."""
    failing = max(h["kept_in_float"] for h in report.history if not h["passed"])
    while passing - failing > 1:
        middle = (passing + failing) // 2
        rows = [*prefix, *order[:middle - len(prefix)]]
        trial_path = build([row["node"] for row in rows])
        trial_verdict = gate(trial_path, precision)
        report.history.append(_verdict(trial_verdict, middle))
        if trial_verdict.passed:
            passing, path, verdict = middle, trial_path, trial_verdict
            chosen = {row["node"]: row for row in rows}
        else:
            failing = middle
    return path, verdict, chosen


def repair(build: Build, parent: Path, precision: str, gate: Gate, candidates: set[str], probe: Inputs,
           timing_inputs: Inputs, max_rounds: int = 6, op_types: dict[str, str] | None = None,
           method: str = "sensitivity", max_kept: int | None = None,
           fmt: Format = Format.ONNX, rank: Rank | None = None, patience: int = 2,
           build_many: BuildMany | None = None) -> tuple[Path, RepairReport]:
    """Rebuild with more nodes in float until ``gate`` passes; returns the last build and the report.

    At most ``max_kept`` nodes stay in float. ``method``: "sensitivity" converts each candidate
    alone to rank them by their own harm, then selects forward with the gate and, failing that,
    keeps more in harm order (for int8, where candidates are the few weight nodes); "localize"
    ranks candidates by the error they add in the full conversion (one build per round: for fp16,
    where every node is a candidate; ONNX only); "ranked" orders candidates by ``rank`` on the first
    build instead of a build per candidate, then keeps more in that order and bisects for the fewest,
    with no forward selection (for conversions whose builds take seconds: NNCF's). ``fmt`` is the
    format of ``parent`` and of the builds. Keeping more stops early after ``patience`` rounds in a
    row that do not raise the best min cosine reached (a conversion whose error is not in a few nodes
    does not pass by keeping more; the report says so). ``build_many`` makes the builds of the
    ranking and of a forward-selection round (default: ``build`` one by one).
    """
    many = build_many or one_by_one(build)
    kept: list[str] = []
    first = path = build(kept)
    verdict = gate(path, precision)
    report = RepairReport(passed=verdict.passed, history=[_verdict(verdict, 0)])
    if fmt is Format.ONNX:
        report.localization = localize(path, parent, probe).to_json()
    if verdict.passed:
        return path, report
    order: list[dict[str, Any]] | None = None
    if method == "sensitivity":
        order = sensitivity(many, parent, candidates, probe, op_types or {}, fmt)
    elif method == "ranked":
        assert rank is not None, "the ranked method needs a rank function"
        order = rank(path, parent, probe, candidates)
    if order is not None:
        report.localization["sensitivity"] = order[:20]
    limit = max_kept if max_kept is not None else len(candidates)
    chosen: dict[str, dict[str, Any]] = {}
    if method == "sensitivity" and order is not None:
        forward_path, forward_verdict, chosen = _forward(many, gate, precision, order, report, limit)
        if forward_path is not None and forward_verdict is not None:
            path, verdict = forward_path, forward_verdict
    prefix = list(chosen.values())
    grow, stale = 1, 0
    for _ in range(max_rounds if not verdict.passed else 0):
        if order is not None:
            ranked = [row for row in order if row["node"] not in chosen]
        else:
            ranked = [n.to_json() for n in rank_nodes(path, parent, probe, candidates - set(chosen))]
        room = limit - len(chosen)
        if not ranked or room <= 0:
            break
        for row in ranked[:min(grow, room)]:
            chosen[row["node"]] = row
        kept = list(chosen)
        grow *= 2
        best = report.best_cos()
        path = build(kept)
        verdict = gate(path, precision)
        report.history.append(_verdict(verdict, len(kept)))
        log.info("repair: %d nodes kept in float -> cos_min %.5f, %s", len(kept), verdict.cos_min,
                 "passes" if verdict.passed else "still fails")
        if verdict.passed:
            break
        stale = stale + 1 if verdict.cos_min <= best else 0
        if stale >= patience:
            report.stopped = (f"stopped after {stale} rounds without progress: keeping up to {len(kept)} nodes "
                              f"in float never raised min cosine above {report.best_cos():.5f}")
            log.info("repair: %s", report.stopped)
            break
    if verdict.passed and order is not None and len(chosen) > len(prefix) + 1:
        rest = [row for row in order if row["node"] not in {r["node"] for r in prefix}]
        path, verdict, chosen = _fewest(build, gate, precision, prefix, rest, report, len(chosen), path, verdict,
                                        chosen)
    report.passed = verdict.passed
    report.kept = list(chosen.values())
    before, after = p50_ms(first, timing_inputs, fmt), p50_ms(path, timing_inputs, fmt)
    report.speed = {"p50_ms_plain": round(before, 3), "p50_ms_repaired": round(after, 3),
                    "slowdown": round(after / before, 3)}
    return path, report
