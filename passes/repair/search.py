"""Repair a reduced-precision conversion that fails its gate: keep the nodes that add the most error
in float, measured, until the gate passes or the budget (passes.repair.budget) runs out.

How the nodes are chosen is a strategy (passes.repair.strategies). With few candidates (int8: the
weight nodes), each round first tries every one of the most harmful ones with the gate itself and
keeps the best (a forward selection: on all-MiniLM-L6-v2, smoothed, it passes with 3 nodes in float
where keeping the most harmful nodes by their own harm needed 12, because harm does not add up node
by node); when that does not pass within its rounds, more nodes are kept in the order of their own
harm, doubling each round, and the fewest that pass are bisected.

The conversion is rebuilt from the fp32 parent each round (its builds take the nodes to keep in
float and return a new file), localised against the parent (ONNX), and checked with the step's own
gate. What stayed in higher precision, and what it cost in speed, is reported. Builds of any format
the Runner runs can be repaired (an OpenVINO IR, with NNCF's ignored scope as the nodes kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

from passes.repair.budget import RepairBudget
from passes.repair.builds import Builds
from passes.repair.localize import localize
from pipeline.core.artifact import Format
from pipeline.engine.pass_api import Gate, GateResult
from pipeline.model.inputs import Inputs
from pipeline.runtime.backends import Backend, file_backend
from pipeline.runtime.timing import Protocol as TimingProtocol
from pipeline.runtime.timing import Timer, latencies, summarize, warm_up


class RepairRound(TypedDict):
    """One build the repair judged: how many nodes it kept in float, and the gate's verdict on it."""

    kept_in_float: int
    passed: bool
    cos_min: float
    max_abs: float
    failures: list[str]


@dataclass
class RepairReport:
    """What the repair did: rounds, nodes kept in float, verdicts along the way, the speed cost."""

    passed: bool
    kept: list[dict[str, Any]] = field(default_factory=list)
    history: list[RepairRound] = field(default_factory=list)
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


@dataclass(frozen=True)
class Conversion:
    """What a repair rebuilds: the fp32 ``parent``, its ``builds`` (one per list of nodes kept in float),
    the ``candidates`` that may stay in float (name -> op type), and the format of the parent and builds."""

    parent: Path
    builds: Builds
    candidates: dict[str, str]
    fmt: Format = Format.ONNX


@dataclass(frozen=True)
class GateCheck:
    """How a build is judged: the step's ``gate`` at ``precision``; ``probe``, the inputs harm is localised
    and ranked on; ``timing_inputs``, those the speed cost is measured on."""

    gate: Gate
    precision: str
    probe: Inputs
    timing_inputs: Inputs


@dataclass
class Search:
    """One repair under way: the build it stands on (``path``, its ``verdict``, and the nodes it keeps in
    float, ``chosen``, with their rows), and its report so far."""

    conversion: Conversion
    check: GateCheck
    budget: RepairBudget
    path: Path
    verdict: GateResult
    report: RepairReport
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def start(cls, conversion: Conversion, check: GateCheck, budget: RepairBudget) -> Search:
        """A search standing on the build with no node in float, judged and recorded."""
        first = conversion.builds([])
        verdict = check.gate(first, check.precision)
        search = cls(conversion, check, budget, first, verdict, RepairReport(passed=verdict.passed))
        search.record(verdict, 0)
        return search

    def judge(self, path: Path) -> GateResult:
        """The gate's verdict on a build."""
        return self.check.gate(path, self.check.precision)

    def record(self, verdict: GateResult, kept: int) -> None:
        """Add a build's verdict, with ``kept`` nodes in float, to the report's history."""
        self.report.history.append({"kept_in_float": kept, "passed": verdict.passed, "cos_min": verdict.cos_min,
                                    "max_abs": verdict.max_abs, "failures": verdict.failures[:3]})

    def attempt(self, nodes: list[str], kept: int) -> tuple[Path, GateResult]:
        """Build with ``nodes`` in float, judge it, and record it as keeping ``kept``."""
        path = self.conversion.builds(nodes)
        verdict = self.judge(path)
        self.record(verdict, kept)
        return path, verdict


class RepairStrategy(Protocol):
    """How a repair chooses the nodes to keep in float (passes.repair.strategies)."""

    def run(self, search: Search) -> None:
        """Try builds with more nodes in float, within ``search.budget``, until one passes ``search``'s gate;
        leave ``search`` on the build to ship (the one that passes, else the last or best tried)."""


def candidate_backend(path: Path, fmt: Format, threads: int | None = None) -> Backend:
    """A candidate's backend on the CPU (ONNX or OpenVINO: files that name their inputs and outputs)."""
    return file_backend(fmt, path, ([], []), "cpu", threads)


def p50_ms(path: Path, inputs: Inputs, fmt: Format = Format.ONNX, threads: int = 2, repeats: int = 30) -> float:
    """Median latency of one model file on ``inputs`` (warmed up; for comparing two candidates)."""
    call = candidate_backend(path, fmt, threads).stage(inputs)
    protocol = TimingProtocol(warmup=5, warmup_seconds=0, min_repeats=repeats, min_seconds=0)
    warm_up(call, Timer(), protocol)
    times = latencies(call, Timer(), protocol)
    return summarize(times, protocol.cv_threshold)["p50_ms"]


def repair(conversion: Conversion, check: GateCheck, strategy: RepairStrategy, budget: RepairBudget
           ) -> tuple[Path, RepairReport]:
    """Build with no node in float and, when that fails the gate, let ``strategy`` keep nodes in float
    within ``budget``; returns the build to ship and the report (with the speed cost when it repaired)."""
    search = Search.start(conversion, check, budget)
    first, report = search.path, search.report
    if conversion.fmt is Format.ONNX:
        report.localization = localize(first, conversion.parent, check.probe).to_json()
    if report.passed:
        return first, report
    strategy.run(search)
    report.passed = search.verdict.passed
    report.kept = list(search.chosen.values())
    timing = check.timing_inputs
    before, after = p50_ms(first, timing, conversion.fmt), p50_ms(search.path, timing, conversion.fmt)
    report.speed = {"p50_ms_plain": round(before, 3), "p50_ms_repaired": round(after, 3),
                    "slowdown": round(after / before, 3)}
    return search.path, report
