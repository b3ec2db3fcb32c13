"""Interleaved rounds against a machine that drifts: fake targets on a virtual clock, so the bias of
each protocol is exact and the test takes milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline.bench.noise import CpuSample, Disturbance, disturbance
from pipeline.bench.rounds import (
    BlockFailed,
    PointRounds,
    Round,
    RoundPlan,
    block_length,
    bootstrap_interval,
    measure_point,
    measure_point_checked,
    point_problem,
    ratio_entry,
    resample,
    rotated,
    speedup_text,
)
from pipeline.recipe.schema import ShipSpec
from pipeline.report.summary import speedup_cell
from pipeline.ship.rule import choose_shipped
from pipeline.verify.parity import Parity

POINT = (1, 128)
BLOCK = {"min_repeats": 15}


@dataclass
class Clock:
    """Virtual seconds: calls and pauses advance it."""

    now: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class DriftingTarget:
    """A model whose every call takes ``base_ms`` times a machine slowdown that grows linearly with the
    clock (``drift`` per second), the same for every target, as a machine whose load creeps up."""

    name: str
    base_ms: float
    clock: Clock
    drift: float = 0.02
    fail_after: int | None = None
    blocks: int = field(default=0)

    def block(self, point: tuple[int, int], protocol: dict[str, Any]) -> dict[str, Any]:
        self.blocks += 1
        if self.fail_after is not None and self.blocks > self.fail_after:
            raise BlockFailed("worker died")
        times = []
        for _ in range(protocol["min_repeats"]):
            ms = self.base_ms * (1 + self.drift * self.clock.now)
            self.clock.now += ms / 1e3
            times.append(ms)
        return {"latencies_ms": times}


def quiet() -> CpuSample:
    return CpuSample(busy=0, steal=0, total=0, watched=0)


def test_a_drifting_machine_biases_the_sequential_ratio_but_not_the_interleaved_one() -> None:
    true_ratio = 60.0 / 20.0  # eager 60 ms, the artifact 20 ms: 3x faster on a still machine
    plan = RoundPlan(rounds=8, pause_seconds=0.2, block=BLOCK)

    clock = Clock()
    eager, fast = DriftingTarget("eager", 60.0, clock), DriftingTarget("fast", 20.0, clock)
    interleaved = ratio_entry(measure_point([eager, fast], POINT, plan, quiet, clock.sleep), "fast", "eager", 0.10)

    clock = Clock()
    eager, fast = DriftingTarget("eager", 60.0, clock), DriftingTarget("fast", 20.0, clock)
    first = measure_point([eager], POINT, plan, quiet, clock.sleep)  # one target's rounds, then the other's
    second = measure_point([fast], POINT, plan, quiet, clock.sleep)
    sequential = (np.median([t for b in first.blocks("eager") for t in b["latencies_ms"]])
                  / np.median([t for b in second.blocks("fast") for t in b["latencies_ms"]]))

    assert interleaved is not None
    assert abs(interleaved["ratio"] - true_ratio) / true_ratio < 0.01
    low, high = interleaved["ci95"]
    assert low <= true_ratio <= high * 1.001 and interleaved["rounds"] == 8 and interleaved["dropped"] == 0
    assert abs(sequential - true_ratio) / true_ratio > 0.05  # the machine slowed between the two: biased


def test_the_order_rotates_every_round() -> None:
    names = ["eager", "a", "b"]
    assert [rotated(names, i) for i in range(4)] == [["eager", "a", "b"], ["a", "b", "eager"],
                                                      ["b", "eager", "a"], ["eager", "a", "b"]]
    clock = Clock()
    targets = [DriftingTarget(n, 1.0, clock, drift=0.0) for n in names]
    rounds = measure_point(targets, POINT, RoundPlan(rounds=3, block=BLOCK), quiet, clock.sleep)
    assert [r.order[0] for r in rounds.rounds] == names


def _noisy_samples(disturbed_rounds: set[int]) -> Any:
    """CPU samples (two per round) in which the listed rounds saw other processes busy on half the cores."""
    state = {"calls": 0, "busy": 0, "total": 0}

    def sample() -> CpuSample:
        round_index = state["calls"] // 2
        if state["calls"] % 2:  # the round's end: it took 100 ticks
            state["total"] += 100
            state["busy"] += 60 if round_index in disturbed_rounds else 5
        state["calls"] += 1
        return CpuSample(busy=state["busy"], steal=0, total=state["total"], watched=0)

    return sample


def test_a_disturbed_round_is_dropped_and_run_again_and_the_report_says_so() -> None:
    clock = Clock()
    targets = [DriftingTarget("eager", 10.0, clock, drift=0.0), DriftingTarget("fast", 5.0, clock, drift=0.0)]
    plan = RoundPlan(rounds=4, max_others=0.15, max_redo=3, block=BLOCK)
    rounds = measure_point(targets, POINT, plan, _noisy_samples({1}), clock.sleep)
    assert len(rounds.rounds) == 5 and rounds.dropped() == 1 and len(rounds.counted()) == 4
    assert "other processes used 60%" in (rounds.rounds[1].dropped or "")
    entry = ratio_entry(rounds, "fast", "eager", 0.10)
    assert entry is not None and entry["dropped"] == 1 and entry["rounds"] == 4 and not entry["unstable"]
    assert entry["others_cpu_max"] == pytest.approx(0.60) and "1 of 5 rounds dropped" in entry["reasons"][0]


def test_when_every_round_is_disturbed_they_are_kept_and_flagged() -> None:
    clock = Clock()
    targets = [DriftingTarget("eager", 10.0, clock, drift=0.0), DriftingTarget("fast", 5.0, clock, drift=0.0)]
    plan = RoundPlan(rounds=3, max_redo=2, block=BLOCK)
    rounds = measure_point(targets, POINT, plan, _noisy_samples(set(range(10))), clock.sleep)
    assert len(rounds.rounds) == 5 and len(rounds.counted()) == 5  # 3 rounds and 2 redos, all disturbed
    entry = ratio_entry(rounds, "fast", "eager", 0.10)
    assert entry is not None and entry["unstable"] and "every round was disturbed" in entry["reasons"][-1]


def test_a_wide_interval_is_flagged_with_the_reason() -> None:
    rounds = PointRounds(POINT, [Round(["eager", "fast"], {"eager": {"latencies_ms": [10.0]},
                                                           "fast": {"latencies_ms": [ms]}}, Disturbance(0, 0))
                                 for ms in (4.0, 5.0, 6.5, 4.2, 7.0, 5.1)])
    entry = ratio_entry(rounds, "fast", "eager", 0.10)
    assert entry is not None and entry["unstable"]
    assert "wider than ±10%" in entry["reasons"][0] and entry["ci95"][0] < entry["ratio"] < entry["ci95"][1]


def test_a_target_whose_block_fails_leaves_the_rounds() -> None:
    clock = Clock()
    eager, broken = DriftingTarget("eager", 10.0, clock), DriftingTarget("broken", 5.0, clock, fail_after=2)
    rounds = measure_point([eager, broken], POINT, RoundPlan(rounds=5, block=BLOCK), quiet, clock.sleep)
    assert rounds.failed == {"broken": "worker died"} and broken.blocks == 3 and eager.blocks == 5


def test_the_bootstrap_interval_holds_the_median_and_narrows_with_more_rounds() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.normal(2.0, 0.1, 10), rng.normal(2.0, 0.1, 60)
    for values in (few, many):
        low, high = bootstrap_interval(list(values), seed=1)
        assert low <= float(np.median(values)) <= high
    assert np.diff(bootstrap_interval(list(many), seed=1)) < np.diff(bootstrap_interval(list(few), seed=1))
    assert bootstrap_interval([2.0, 2.0, 2.0], seed=1) == (2.0, 2.0)


def test_steal_and_other_processes_are_shares_of_all_cpu_time() -> None:
    before = CpuSample(busy=100, steal=10, total=1000, watched=40)
    after = CpuSample(busy=180, steal=30, total=1200, watched=90)  # 80 busy ticks, 50 of them ours
    noise = disturbance(before, after)
    assert noise.steal == pytest.approx(0.10) and noise.others == pytest.approx(0.15)
    assert noise.exceeds(0.05, 0.20) == "steal 10% > 5%"
    assert noise.exceeds(0.20, 0.20) is None


@dataclass
class ProcessTarget(DriftingTarget):
    """A target whose speed depends on the process it runs in: each generation is ``offsets`` slower or
    faster, as where a process's memory landed makes it."""

    offsets: tuple[float, ...] = (1.0,)
    generation: int = 0

    def block(self, point: tuple[int, int], protocol: dict[str, Any]) -> dict[str, Any]:
        reply = super().block(point, protocol)
        return {"latencies_ms": [t * self.offsets[self.generation] for t in reply["latencies_ms"]]}


def test_rounds_spread_over_generations_restart_the_workers_halfway_and_widen_the_interval() -> None:
    clock = Clock()
    eager = ProcessTarget("eager", 60.0, clock, drift=0.0, offsets=(1.0, 1.0))
    fast = ProcessTarget("fast", 20.0, clock, drift=0.0, offsets=(1.0, 1.2))  # the second process is 20% slower
    restarts = []

    def restart() -> list[ProcessTarget]:
        restarts.append(clock.now)
        eager.generation = fast.generation = 1
        return [eager, fast]

    measured = measure_point([eager, fast], POINT, RoundPlan(rounds=8, generations=2, block=BLOCK), quiet,
                             clock.sleep, restart=restart)
    assert len(restarts) == 1 and [r.generation for r in measured.rounds] == [0] * 4 + [1] * 4

    spread = ratio_entry(measured, "fast", "eager", 0.10)
    assert spread is not None and spread["generations"] == 2
    low, high = spread["ci95"]
    assert low <= 2.5 and high >= 3.0  # both processes' ratios: 3.0 and 2.5


def test_without_a_restart_every_round_is_one_generation() -> None:
    clock = Clock()
    targets = [DriftingTarget(n, 1.0, clock, drift=0.0) for n in ("eager", "a")]
    rounds = measure_point(targets, POINT, RoundPlan(rounds=4, generations=2, block=BLOCK), quiet, clock.sleep)
    assert {r.generation for r in rounds.rounds} == {0}


def test_the_two_stage_bootstrap_holds_the_spread_between_processes_that_one_stage_misses() -> None:
    rng = np.random.default_rng(0)
    first, second = 2.9 + 0.02 * rng.standard_normal(12), 2.5 + 0.02 * rng.standard_normal(12)
    values = [*first, *second]
    low, high = bootstrap_interval(values, seed=1)
    assert not (low <= 2.5 and high >= 2.9)  # resampling single rounds sees only the rounds' own noise
    low, high = bootstrap_interval(values, seed=1, groups=[0] * 12 + [1] * 12)
    assert low <= 2.51 and high >= 2.89
    assert bootstrap_interval(values, seed=1, groups=[0] * 24) == bootstrap_interval(values, seed=1)


def test_the_bootstrap_draws_runs_of_rounds_so_slow_stretches_widen_the_interval() -> None:
    draw = resample(np.random.default_rng(0), np.arange(12.0))
    runs = draw.reshape(-1, block_length(12))
    assert block_length(12) == 3 and all(((row - row[0]) % 12 == [0, 1, 2]).all() for row in runs)
    widening = []
    for seed in range(6):  # ratios that wander slowly (AR(1), 0.8 from round to round) against the same shuffled
        rng = np.random.default_rng(seed)
        wander = np.zeros(24)
        for index in range(1, 24):
            wander[index] = 0.8 * wander[index - 1] + 0.06 * rng.standard_normal()
        ratios = 3.0 + wander
        clustered = np.diff(bootstrap_interval(list(ratios), seed=1))[0]
        widening.append(clustered / np.diff(bootstrap_interval(list(rng.permutation(ratios)), seed=1))[0])
    assert np.mean(widening) > 1.25


def _restarting(targets: list[ProcessTarget]) -> tuple[Callable[[], list[ProcessTarget]], list[int]]:
    """A restart that moves every target to its next generation of processes, and the generations seen."""
    seen = [0]

    def restart() -> list[ProcessTarget]:
        seen.append(seen[-1] + 1)
        for target in targets:
            target.generation = seen[-1]
        return targets

    return restart, seen


def test_a_baseline_100x_slower_in_one_process_is_flagged_measured_again_and_then_trusted() -> None:
    clock = Clock()
    slow_once = (1.0, 100.0, 1.0, 1.0, 1.0, 1.0)  # eager's second process runs 100x slower
    eager = ProcessTarget("eager", 60.0, clock, drift=0.0, offsets=slow_once)
    fast = ProcessTarget("fast", 20.0, clock, drift=0.0, offsets=(1.0,) * 6)
    restart, seen = _restarting([eager, fast])
    plan = RoundPlan(rounds=6, generations=3, block=BLOCK)
    rounds = measure_point_checked([eager, fast], POINT, plan, "eager", quiet, clock.sleep, restart)
    assert seen == [0, 1, 2, 3, 4, 5]  # three generations of processes, then three fresh ones for the second try
    assert rounds.problem is None and len(rounds.rounds) == 6 and eager.generation == 5
    entry = ratio_entry(rounds, "fast", "eager", 0.10, plan.min_rounds)
    assert entry is not None and entry["measured"] and entry["ratio"] == pytest.approx(3.0)


def test_a_baseline_that_stays_implausible_is_not_measured_and_ships_nothing() -> None:
    clock = Clock()
    eager = ProcessTarget("eager", 60.0, clock, drift=0.0, offsets=(1.0, 100.0) * 3)
    fast = ProcessTarget("fast", 20.0, clock, drift=0.0, offsets=(1.0,) * 6)
    restart, _ = _restarting([eager, fast])
    plan = RoundPlan(rounds=6, generations=3, block=BLOCK)
    rounds = measure_point_checked([eager, fast], POINT, plan, "eager", quiet, clock.sleep, restart)
    assert rounds.problem is not None and "moved 100.0x between rounds and processes" in rounds.problem
    entry = ratio_entry(rounds, "fast", "eager", 0.10, plan.min_rounds)
    assert entry is not None and not entry["measured"] and entry["unstable"]
    assert entry["reasons"][0].startswith("not measured: eager's median latency moved")
    assert speedup_text(entry) == "not measured"
    # the run keeps such an entry apart from the ratios (pipeline.bench.orchestrate); the ship rule sees none
    parity = {"fast": Parity(passed=True, metrics={"out": {"cos_min": 1.0, "max_abs": 0.0}}, tolerance={}),
              "slow": Parity(passed=True, metrics={"out": {"cos_min": 1.0, "max_abs": 0.0}}, tolerance={})}
    measured = [e for e in [entry] if e["measured"]]
    chosen, note = choose_shipped(ShipSpec(fastest_at=POINT), ["fast", "slow"], parity, {}, measured)
    assert chosen == "slow" and note is None  # no figure at the ship point: the rule's last passing step


def test_a_point_with_one_surviving_round_prints_no_interval() -> None:
    quiet_round = Round(["eager", "fast"], {"eager": {"latencies_ms": [10.0]}, "fast": {"latencies_ms": [2.0]}},
                        Disturbance(0, 0))
    noisy = [Round(["eager", "fast"], {"eager": {"latencies_ms": [10.0]}, "fast": {"latencies_ms": [3.0]}},
                   Disturbance(0, 0.6), dropped="other processes used 60% of the cores") for _ in range(10)]
    rounds = PointRounds(POINT, [*noisy, quiet_round])
    plan = RoundPlan(rounds=8)
    assert point_problem(rounds, plan, "eager") == "1 undisturbed round(s) of 8, fewer than the 4 an interval needs"
    entry = ratio_entry(rounds, "fast", "eager", 0.10, plan.min_rounds)
    assert entry is not None and not entry["measured"] and entry["unstable"]
    assert speedup_text(entry) == "not measured" and "[" not in speedup_cell(entry)
    assert "1 round(s) measured both, fewer than the 4" in entry["reasons"][0]


def test_every_round_disturbed_twice_is_not_measured() -> None:
    clock = Clock()
    targets = [DriftingTarget("eager", 10.0, clock, drift=0.0), DriftingTarget("fast", 5.0, clock, drift=0.0)]
    plan = RoundPlan(rounds=3, max_redo=2, block=BLOCK)
    rounds = measure_point_checked(targets, POINT, plan, "eager", _noisy_samples(set(range(20))), clock.sleep)
    assert rounds.problem is not None and rounds.problem.startswith("every round was disturbed")
    entry = ratio_entry(rounds, "fast", "eager", 0.10, plan.min_rounds)
    assert entry is not None and not entry["measured"]
