"""Interleaved rounds: the targets that are compared measure the same point in turn, round after round.

Targets measured one after the other, minutes apart, put any drift of the machine into their ratio
(the same artifacts gave 1.81x and 3.55x over eager an hour apart). Here every round measures every
target once, in an order rotated each round, with a pause before each so that onnxruntime's spinning
threads park; a ratio is taken within a round (target against the baseline measured seconds before or
after), and the rounds' ratios are summarized as their median and a 95% bootstrap interval. A round
during which the hypervisor stole time or other processes used the cores past a bound is dropped
and run again, up to a limit, and the summary says how many were.

A point whose rounds cannot carry a ratio is measured once more, in fresh processes where the point
spreads over generations: every round disturbed, fewer undisturbed rounds than half the plan (an
interval from one round is no interval), or a baseline whose median latency moved more than
``max_baseline_spread`` times between rounds (a machine that ran eager at 207 ms for a round where it
runs 1.9 ms quiet). When the second attempt fails too, the point is not measured: its ratios say why
and never choose what ships.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from pipeline.bench.noise import CpuSample, Disturbance, disturbance
from pipeline.bench.spec import Ratio

log = logging.getLogger(__name__)
Point = tuple[int, int]
BOOTSTRAP_RESAMPLES = 2000


class BlockFailed(RuntimeError):
    """A target could not measure a block (its worker died, timed out or raised): it leaves the rounds."""


class Measurer(Protocol):
    """One target that measures a block of timed calls at a point on request."""

    @property
    def name(self) -> str:
        """The target's name."""
        ...

    def block(self, point: Point, protocol: dict[str, Any]) -> dict[str, Any]:
        """Timed calls at ``point``: at least ``{"latencies_ms": [...]}``; raises BlockFailed."""
        ...


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds a point gets, what each target measures in one, and what counts as disturbed."""

    rounds: int = 8
    pause_seconds: float = 0.02
    max_steal: float = 0.05
    max_others: float = 0.15
    max_redo: int = 3
    interval_tolerance: float = 0.10
    generations: int = 1  # the rounds are spread over this many generations of worker processes
    block: dict[str, Any] = field(default_factory=dict)
    max_baseline_spread: float = 3.0  # the baseline's slowest round over its fastest, past which a point is redone
    max_round_spread: float = 0.10  # a target's round medians' IQR over their median, past which a row is unstable

    @property
    def min_rounds(self) -> int:
        """The fewest undisturbed rounds a ratio's interval is drawn from: half the plan's, at least 2."""
        return min(self.rounds, max(2, math.ceil(self.rounds / 2)))

    def generation_of(self, counted: int) -> int:
        """The generation the next round belongs to, after ``counted`` rounds that count."""
        per_generation = math.ceil(self.rounds / self.generations)
        return min(counted // per_generation, self.generations - 1)


@dataclass
class Round:
    """One round: the order the targets ran in, each one's block, and how disturbed the cores were."""

    order: list[str]
    blocks: dict[str, dict[str, Any]]
    noise: Disturbance
    dropped: str | None = None  # why the round does not count
    generation: int = 0  # which generation of worker processes measured it


@dataclass
class PointRounds:
    """Every round of one point, and the targets that failed on the way (name -> reason)."""

    point: Point
    rounds: list[Round]
    failed: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why the point carries no ratio, after it was measured again

    def counted(self) -> list[Round]:
        """The rounds that count: the undisturbed ones, or all of them when every round was disturbed."""
        quiet = [r for r in self.rounds if r.dropped is None]
        return quiet or self.rounds

    def dropped(self) -> int:
        """How many rounds do not count."""
        return len(self.rounds) - len(self.counted())

    def blocks(self, name: str) -> list[dict[str, Any]]:
        """The target's blocks over the rounds that count."""
        return [r.blocks[name] for r in self.counted() if name in r.blocks]


def rotated(names: Sequence[str], index: int) -> list[str]:
    """The targets in round ``index``'s order: the list rotated by the round's index."""
    shift = index % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


def measure_point(measurers: Sequence[Measurer], point: Point, plan: RoundPlan,
                  cpu_sample: Callable[[], CpuSample], sleep: Callable[[float], None] = time.sleep,
                  restart: Callable[[], Sequence[Measurer]] | None = None) -> PointRounds:
    """Run ``plan.rounds`` undisturbed rounds of every target at ``point`` (at most ``plan.max_redo``
    more to replace disturbed ones); a target whose block fails leaves the remaining rounds. With
    ``restart`` (which starts every target again in a fresh process), the rounds are spread evenly over
    ``plan.generations`` generations of processes."""
    result = PointRounds(point, [])
    index = generation = 0
    while (counted := sum(r.dropped is None for r in result.rounds)) < plan.rounds and \
            index < plan.rounds + plan.max_redo:
        if restart is not None and plan.generation_of(counted) > generation:
            measurers, generation = restart(), plan.generation_of(counted)
        live = {m.name: m for m in measurers if m.name not in result.failed}
        if not live:
            break
        order = rotated(list(live), index)
        before, blocks = cpu_sample(), {}
        for name in order:
            sleep(plan.pause_seconds)
            try:
                blocks[name] = live[name].block(point, plan.block)
            except BlockFailed as exc:
                result.failed[name] = str(exc)
        noise = disturbance(before, cpu_sample())
        result.rounds.append(Round(order, blocks, noise, noise.exceeds(plan.max_steal, plan.max_others), generation))
        index += 1
    return result


def point_problem(rounds: PointRounds, plan: RoundPlan, baseline: str) -> str | None:
    """Why the rounds of a point cannot carry a ratio over ``baseline``; None when they can."""
    if rounds.rounds and all(r.dropped for r in rounds.rounds):
        why = sorted({r.dropped or "" for r in rounds.rounds})
        return f"every round was disturbed ({'; '.join(why)})"
    counted = [r for r in rounds.counted() if baseline in r.blocks]
    if len(counted) < plan.min_rounds:
        return (f"{len(counted)} undisturbed round(s) of {plan.rounds}, fewer than the {plan.min_rounds} an "
                f"interval needs")
    medians = [_median(r.blocks[baseline]["latencies_ms"]) for r in counted]
    spread = max(medians) / min(medians) if min(medians) > 0 else math.inf
    if spread > plan.max_baseline_spread:
        between = "rounds and processes" if len({r.generation for r in counted}) > 1 else "rounds"
        return (f"{baseline}'s median latency moved {spread:.1f}x between {between} ({min(medians):.3g} to "
                f"{max(medians):.3g} ms), past the {plan.max_baseline_spread:g}x a measurement may move")
    return None


def measure_point_checked(measurers: Sequence[Measurer], point: Point, plan: RoundPlan, baseline: str,
                          cpu_sample: Callable[[], CpuSample], sleep: Callable[[float], None] = time.sleep,
                          restart: Callable[[], Sequence[Measurer]] | None = None) -> PointRounds:
    """``measure_point``, and once more (every worker started again first, given ``restart``) when its rounds
    cannot carry a ratio (``point_problem``); a second failure is kept as the point's ``problem``."""
    first = measure_point(measurers, point, plan, cpu_sample, sleep, restart)
    why = point_problem(first, plan, baseline)
    if why is None or baseline in first.failed:  # without the baseline, no ratio comes from a second try either
        return first
    log.warning("bench b%d s%d: %s; measuring the point again", *point, why)
    again = measure_point(restart() if restart is not None else measurers, point, plan, cpu_sample, sleep, restart)
    again.failed = {**first.failed, **again.failed}
    again.problem = point_problem(again, plan, baseline)
    if again.problem is not None:
        log.warning("bench b%d s%d: not measured: %s again; no ratio there is used to choose what ships",
                    *point, again.problem)
    return again


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def block_length(size: int) -> int:
    """Rounds per block of the bootstrap: about the cube root of the rounds (3 of 12 or 24)."""
    return max(1, math.ceil(size ** (1 / 3)))


def resample(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """One circular block bootstrap draw of ``values`` (in the order measured): runs of
    ``block_length`` consecutive values from random starts, wrapping at the end, as many values as
    there are. Slow stretches of a shared machine outlast a round (onnxruntime int8 on MiniLM here
    ran 10 or 16 ms per call for seconds at a time, eager not): drawn one by one, rounds from such a
    stretch look independent and the interval comes out too narrow."""
    size, block = values.size, block_length(values.size)
    starts = rng.integers(0, size, size=-(-size // block))
    return values[(starts[:, None] + np.arange(block)[None, :]).ravel()[:size] % size]


def bootstrap_interval(values: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                       groups: Sequence[int] | None = None) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values`` (in the order measured),
    resampled in blocks of consecutive rounds (``resample``). With ``groups`` (the generation of
    processes each value came from) and more than one group, the resampling is in two stages: the
    groups with replacement, then the values within each drawn group, so that the interval also holds
    the variation between processes, which resampling single values cannot see."""
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    members = [data[np.asarray(groups) == g] for g in sorted(set(groups))] if groups is not None else [data]
    medians = np.empty(resamples)
    for index in range(resamples):
        drawn = rng.integers(0, len(members), size=len(members)) if len(members) > 1 else [0]
        medians[index] = np.median(np.concatenate([resample(rng, members[g]) for g in drawn]))
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def paired(rounds: Sequence[Round], target: str, baseline: str) -> list[Round]:
    """The rounds that measured both the target and the baseline."""
    return [r for r in rounds if target in r.blocks and baseline in r.blocks]


def round_ratios(rounds: Sequence[Round], target: str, baseline: str) -> list[float]:
    """Per round that has both: the baseline's median latency over the target's (above 1: faster)."""
    return [_median(r.blocks[baseline]["latencies_ms"]) / _median(r.blocks[target]["latencies_ms"])
            for r in paired(rounds, target, baseline)]


def interval(ratios: Sequence[float], label: str, tolerance: float,
             generations: Sequence[int] | None = None) -> dict[str, Any]:
    """Per-round ratios summarized: their median, a 95% bootstrap interval (seeded by ``label``, so the
    same rounds give the same interval; over ``generations`` of processes when given), and a flag when
    the interval is wider than ±``tolerance``."""
    ratio = _median(ratios)
    low, high = bootstrap_interval(ratios, seed=zlib.crc32(label.encode()), groups=generations)
    processes = len(set(generations)) if generations is not None else 1
    entry: dict[str, Any] = {"ratio": ratio, "ci95": [low, high], "rounds": len(ratios), "generations": processes,
                             "unstable": (high - low) / 2 > tolerance * ratio, "reasons": []}
    if entry["unstable"]:
        entry["reasons"].append(f"95% interval [{low:.2f}, {high:.2f}] is wider than ±{tolerance:.0%} of "
                                f"{ratio:.2f}x over {len(ratios)} rounds")
    return entry


def paired_interval(baseline_ms: Sequence[float], target_ms: Sequence[float], label: str, tolerance: float
                    ) -> dict[str, Any] | None:
    """The interval of baseline over target from their per-round median latencies (the same rounds, in
    the same order: a grid row's ``round_p50_ms``); None when they do not pair up."""
    if not baseline_ms or len(baseline_ms) != len(target_ms):
        return None
    return interval([b / t for b, t in zip(baseline_ms, target_ms, strict=True)], label, tolerance)


def ratio_entry(point_rounds: PointRounds, target: str, baseline: str, tolerance: float,
                min_rounds: int = 2) -> Ratio | None:
    """The report's ratio of ``target`` over ``baseline`` at this point, with the rounds' noise, flagged
    when its interval is wider than ±``tolerance`` or every round was disturbed; None when no round
    measured both. ``measured`` is False, with the reason first among ``reasons``, when the point has a
    problem or fewer than ``min_rounds`` rounds measured both: such a ratio is no interval."""
    counted = point_rounds.counted()
    ratios = round_ratios(counted, target, baseline)
    if not ratios:
        return None
    batch, seq = point_rounds.point
    generations = [r.generation for r in paired(counted, target, baseline)]
    summary = interval(ratios, f"{target}/{baseline}/{batch}/{seq}", tolerance, generations)
    reasons = summary.pop("reasons")
    entry = cast(Ratio, {"target": target, "baseline": baseline, "batch": batch, "seq": seq, **summary,
                         "dropped": point_rounds.dropped(),
                         "steal_max": max(r.noise.steal for r in point_rounds.rounds),
                         "others_cpu_max": max(r.noise.others for r in point_rounds.rounds)})
    if point_rounds.dropped():
        why = sorted({r.dropped for r in point_rounds.rounds if r.dropped})
        reasons.append(f"{point_rounds.dropped()} of {len(point_rounds.rounds)} rounds dropped ({'; '.join(why)})")
    if all(r.dropped for r in counted):
        why = sorted({r.dropped or "" for r in counted})
        reasons.append(f"every round was disturbed ({'; '.join(why)}); none could be dropped")
        entry["unstable"] = True
    problem = point_rounds.problem or (None if len(ratios) >= min_rounds else
                                        f"{len(ratios)} round(s) measured both, fewer than the {min_rounds} an "
                                        f"interval needs")
    entry["measured"] = problem is None
    if problem is not None:
        entry["unstable"] = True
        reasons.insert(0, f"not measured: {problem}")
    if reasons:
        entry["reasons"] = reasons
    return entry


def separated(best: Ratio, other: Ratio) -> bool:
    """Whether ``best``'s interval lies wholly above ``other``'s (the two are told apart)."""
    return best["ci95"][0] > other["ci95"][1]


def speedup_text(entry: Ratio) -> str:
    """'1.92x [1.85, 2.01]': a ratio with its interval; 'not measured' for a ratio that is none."""
    if not entry.get("measured", True):
        return "not measured"
    low, high = entry["ci95"]
    return f"{entry['ratio']:.2f}x [{low:.2f}, {high:.2f}]"
