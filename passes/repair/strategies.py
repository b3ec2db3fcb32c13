"""The ways a repair chooses the nodes to keep in float, one per kind of conversion, each a
passes.repair.search.RepairStrategy; and the steps they share: keeping more in an order of harm,
doubling each round, and bisecting that order for the fewest that pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from passes.repair.localize import rank_nodes
from passes.repair.search import Search, candidate_backend
from pipeline.core.artifact import Format
from pipeline.model.inputs import Inputs
from pipeline.runtime.runner import as_function
from pipeline.verify.metrics import compare

log = logging.getLogger(__name__)
Row = dict[str, Any]  # a candidate as the report lists it: "node", "op_type", and its measured harm
# (reduced build, parent, probe, candidates) -> candidates as rows, most harmful first
Rank = Callable[[Path, Path, Inputs, set[str]], list[Row]]
REPORTED_RANKS = 20  # how many of a ranking the report's localization lists


class ForwardSelection:
    """For int8, whose candidates are the few weight nodes: rank them by their own harm (a build each),
    select forward with the gate, and failing that keep more in harm order and bisect for the fewest."""

    def run(self, search: Search) -> None:
        """Rank, select forward, then keep more (passes.repair.search.RepairStrategy)."""
        order = sensitivity(search)
        search.report.localization["sensitivity"] = order[:REPORTED_RANKS]
        forward(search, order)
        prefix = list(search.chosen.values())
        grow(search, lambda: [row for row in order if row["node"] not in search.chosen])
        fewest(search, prefix, order)


class LocalizedGrowth:
    """For fp16, where every node is a candidate (ONNX only): keep more of the nodes that add the most error
    in the latest build, localised again each round (one build a round)."""

    def run(self, search: Search) -> None:
        """Keep more, localising each round (passes.repair.search.RepairStrategy)."""
        conversion, probe = search.conversion, search.check.probe

        def remaining() -> list[Row]:
            left = set(conversion.candidates) - set(search.chosen)
            return [node.to_json() for node in rank_nodes(search.path, conversion.parent, probe, left)]

        grow(search, remaining)


@dataclass(frozen=True)
class RankedGrowth:
    """For conversions whose builds take seconds (NNCF's): order the candidates once by ``rank`` on the first
    build, instead of a build per candidate, keep more in that order and bisect for the fewest."""

    rank: Rank

    def run(self, search: Search) -> None:
        """Rank once, keep more, bisect (passes.repair.search.RepairStrategy)."""
        conversion = search.conversion
        order = self.rank(search.path, conversion.parent, search.check.probe, set(conversion.candidates))
        search.report.localization["sensitivity"] = order[:REPORTED_RANKS]
        grow(search, lambda: [row for row in order if row["node"] not in search.chosen])
        fewest(search, [], order)


def outputs_of(path: Path, inputs: Inputs, fmt: Format) -> dict[str, np.ndarray]:
    """A model file's outputs on ``inputs``, by name, as float32."""
    backend = candidate_backend(path, fmt)
    return as_function(backend, backend.output_names)(inputs)


def _output_error(path: Path, probe: Inputs, reference: dict[str, np.ndarray], fmt: Format) -> tuple[float, float]:
    """(SQNR dB, min cosine) of a model's outputs on the probe against the parent's, over kept tokens."""
    mask = probe.get("attention_mask")
    worst_sqnr, worst_cos = float("inf"), 1.0
    for name, value in outputs_of(path, probe, fmt).items():
        m = compare(reference[name], value, mask)
        worst_sqnr, worst_cos = min(worst_sqnr, m["sqnr_db"]), min(worst_cos, m["cos_min"])
    return worst_sqnr, worst_cos


def sensitivity(search: Search) -> list[Row]:
    """Each candidate's own harm: convert that node alone, measure the output against the parent.

    Sorted most harmful first (lowest SQNR of the final outputs).
    """
    conversion, probe = search.conversion, search.check.probe
    reference = outputs_of(conversion.parent, probe, conversion.fmt)
    candidates = set(conversion.candidates)
    nodes = sorted(candidates)
    rows = []
    for node, path in zip(nodes, conversion.builds.many([sorted(candidates - {node}) for node in nodes]),
                          strict=True):
        sqnr, cos = _output_error(path, probe, reference, conversion.fmt)
        rows.append({"node": node, "op_type": conversion.candidates[node], "sqnr_db": round(sqnr, 2),
                     "cos_min": round(cos, 6)})
    return sorted(rows, key=lambda row: row["sqnr_db"])


def forward(search: Search, order: list[Row]) -> None:
    """Forward selection: each round keeps in float the one candidate, of the budget's ``greedy_pool`` most
    harmful in ``order``, whose build the gate likes best, until one passes or ``greedy_rounds`` are done."""
    budget, builds = search.budget, search.conversion.builds
    for _ in range(min(budget.greedy_rounds, budget.max_kept)):
        pool = [row for row in order if row["node"] not in search.chosen][:budget.greedy_pool]
        trials = []
        for row, path in zip(pool, builds.many([[*search.chosen, row["node"]] for row in pool]), strict=True):
            verdict = search.judge(path)
            trials.append(((verdict.passed, verdict.cos_min), row, path, verdict))
        if not trials:
            break
        _, row, path, verdict = max(trials, key=lambda trial: trial[0])
        search.chosen[row["node"]] = row
        search.path, search.verdict = path, verdict
        search.record(verdict, len(search.chosen))
        log.info("repair: %d nodes kept in float (best of %d tries) -> cos_min %.5f, %s", len(search.chosen),
                 len(trials), verdict.cos_min, "passes" if verdict.passed else "still fails")
        if verdict.passed:
            break


def grow(search: Search, remaining: Callable[[], list[Row]]) -> None:
    """Keep more nodes in float, the first of ``remaining()`` (the candidates not kept, most harmful first),
    twice as many more each round, until the gate passes, the budget's ``rounds`` or ``max_kept`` are spent,
    or ``patience`` rounds in a row do not raise the best min cosine reached (the report says why)."""
    budget, report = search.budget, search.report
    more, stale = 1, 0
    for _ in range(budget.rounds if not search.verdict.passed else 0):
        ranked = remaining()
        room = budget.max_kept - len(search.chosen)
        if not ranked or room <= 0:
            break
        for row in ranked[:min(more, room)]:
            search.chosen[row["node"]] = row
        more *= 2
        best = report.best_cos()
        search.path, search.verdict = search.attempt(list(search.chosen), len(search.chosen))
        log.info("repair: %d nodes kept in float -> cos_min %.5f, %s", len(search.chosen), search.verdict.cos_min,
                 "passes" if search.verdict.passed else "still fails")
        if search.verdict.passed:
            break
        stale = stale + 1 if search.verdict.cos_min <= best else 0
        if stale >= budget.patience:
            report.stopped = (f"stopped after {stale} rounds without progress: keeping up to {len(search.chosen)} "
                              f"nodes in float never raised min cosine above {report.best_cos():.5f}")
            log.info("repair: %s", report.stopped)
            break


def fewest(search: Search, prefix: list[Row], order: list[Row]) -> None:
    """When more than one node was added to ``prefix`` and the build passes, bisect ``order`` (less the
    prefix) for the fewest nodes after ``prefix`` that still pass (fewer in float is faster)."""
    if not search.verdict.passed or len(search.chosen) <= len(prefix) + 1:
        return
    fixed = {row["node"] for row in prefix}
    rest = [row for row in order if row["node"] not in fixed]
    passing = len(search.chosen)
    failing = max(h["kept_in_float"] for h in search.report.history if not h["passed"])
    while passing - failing > 1:
        middle = (passing + failing) // 2
        rows = [*prefix, *rest[:middle - len(prefix)]]
        path, verdict = search.attempt([row["node"] for row in rows], middle)
        if verdict.passed:
            passing, search.path, search.verdict = middle, path, verdict
            search.chosen = {row["node"]: row for row in rows}
        else:
            failing = middle
