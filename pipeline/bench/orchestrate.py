"""Benchmarks of the eager model and every artifact, side by side: each target in its own long-lived
process (pipeline.bench.pool), measured in interleaved rounds (pipeline.bench.rounds), with each artifact's
ratio over eager taken within a round and summarized with a 95% interval.

The benchmark is one session. Its results are cached under ``bench/`` (one file per target, and
``ratios.json``), keyed by the artifacts, the protocol and the machine, and re-used only whole: a
changed artifact re-measures every target, since a ratio is only true when both sides were measured
together. ``python -m pipeline bench`` always re-measures, and flags every point whose p50 moved
more than ``rerun_tolerance`` from the previous measurement.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from pipeline.bench.fingerprint import fingerprint
from pipeline.bench.noise import sample
from pipeline.bench.pool import Launch, Worker, started
from pipeline.bench.rounds import BlockFailed, Point, RoundPlan, measure_point_checked, ratio_entry
from pipeline.bench.spec import BenchResult, BenchRow, Ratio, WorkerSpec
from pipeline.core.artifact import Artifact
from pipeline.core.limits import available_memory
from pipeline.core.progress import stage
from pipeline.core.seal import read_record, write_record
from pipeline.core.store import canonical_json, sha256_text
from pipeline.model.cache import cache_layout
from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import Recipe
from pipeline.recipe.schema import BenchSpec
from pipeline.runtime.timing import summarize

log = logging.getLogger(__name__)
PROTOCOL_KEYS = ("warmup", "warmup_seconds", "min_repeats", "min_seconds", "max_seconds", "throughput_seconds",
                 "cv_threshold")
BASELINE = "eager"
ROUND_WARMUP_SECONDS = 0.02  # a round's warm-up: enough calls to wake the thread pools after the pause


@dataclass
class Benchmarks:
    """One benchmark session: each target's result (rows, extras, error), and the ratios over eager."""

    results: dict[str, BenchResult] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)
    unmeasured: list[Ratio] = field(default_factory=list)  # points that could not carry a ratio (pipeline.bench.rounds)


def available_memory_mb() -> float:
    """Memory available now, in MB (4096 where it cannot be read)."""
    free = available_memory()
    return free / 2**20 if free is not None else 4096.0


def grid_points(bench: BenchSpec, ship_point: Point | None = None) -> list[Point]:
    """The points measured. ``bench.grid: full``: every batch size with every sequence length, in that
    order. By default: the smallest batch (1, a single request's latency) at every sequence length,
    and the ship point."""
    if bench.grid == "full":
        return [(batch, seq) for batch in bench.batches for seq in bench.seqs]
    points = [(min(bench.batches), seq) for seq in bench.seqs]
    return points if ship_point is None or ship_point in points else [*points, ship_point]


def worker_spec(recipe: Recipe, handle: ModelHandle, target: str, artifact: Artifact) -> WorkerSpec:
    """Everything a worker process needs to benchmark one target."""
    bench = recipe.bench
    spec: WorkerSpec = {
        "target": target, "format": artifact.format.value, "path": str(artifact.path) if artifact.path else None,
        "model": recipe.model.model_dump(), "task": recipe.task, "base_dir": str(handle.base_dir),
        "input_names": handle.input_names, "output_names": handle.output_names, "device": recipe.device,
        "threads": bench.threads, "grid": [list(point) for point in grid_points(bench, ship_point(recipe))],
        "protocol": {key: getattr(bench, key) for key in PROTOCOL_KEYS},
    }
    if handle.tokenizer is not None:
        spec["vocab_size"] = len(handle.tokenizer)
        spec["tokenizer_dir"], gguf_file = handle.tokenizer_location
        if gguf_file is not None:
            spec["tokenizer_gguf"] = gguf_file
    else:
        spec["examples"] = {k: {"data": v.tolist(), "dtype": str(v.dtype)} for k, v in handle.factory_examples.items()}
        # the factory must import in the worker as it did here
        spec["sys_path"] = [p for p in sys.path if p and Path(p).is_dir()]
    full = bench.grid == "full"  # the best-batch search and the real-data run come with the full grid
    if bench.best_batch is not None and full:
        spec["best_batch"] = bench.best_batch.model_dump()
        spec["best_batch"]["memory_limit_mb"] = bench.best_batch.memory_limit_mb or 0.6 * available_memory_mb()
    if recipe.task == "text-generation":
        spec.update(generation_spec(recipe, handle))
    elif bench.real_data is not None and handle.tokenizer is not None and full:
        corpus = recipe.inputs.corpus_path
        spec["real_data"] = {**bench.real_data.model_dump(), "corpus": str(handle.base_dir / corpus)}
    return spec


def generation_spec(recipe: Recipe, handle: ModelHandle) -> WorkerSpec:
    """What a decoder's worker needs besides the grid: the cache layout, and the generation benchmark."""
    out: WorkerSpec = {"cache": dataclasses.asdict(cache_layout(handle.hf_config)),
                       "decoder_points": recipe.bench.decoder_points}
    if recipe.bench.generation is not None:
        corpus = recipe.inputs.corpus_path
        out["generation"] = {**recipe.bench.generation.model_dump(), "corpus": str(handle.base_dir / corpus)}
    return out


def bench_key(recipe: Recipe, artifact: Artifact, one_point: bool = False) -> str:
    """Cache key of a target's benchmark: the artifact, the protocol and grid (or the one point of a
    step that failed its gate), and the machine."""
    machine = fingerprint(recipe.bench.threads, recipe.device)
    return sha256_text(canonical_json({"artifact": artifact.key, "bench": recipe.bench.model_dump(),
                                       "machine": machine, "device": recipe.device,
                                       "one_point": one_point}))


def flag_reruns(result: BenchResult, previous: BenchResult | None, tolerance: float) -> None:
    """Mark points whose p50 moved more than ``tolerance`` from the previous measurement of the same
    target (same cache key: artifact, protocol, machine) as unstable; a changed artifact is no rerun."""
    if not previous or previous.get("key") != result.get("key"):
        return
    before = {(r["batch"], r["seq"]): r["p50_ms"] for r in previous.get("rows", [])}
    for row in result.get("rows", []):
        old = before.get((row["batch"], row["seq"]))
        if old:
            change = (row["p50_ms"] - old) / old
            row["p50_change_from_previous"] = change
            if abs(change) > tolerance:
                row["unstable"] = True
                row.setdefault("unstable_reasons", []).append(f"p50 moved {change:+.0%} from the previous run")


def round_plan(bench: BenchSpec, device: str, rounds: int, generations: int = 1) -> RoundPlan:
    """A point's ``rounds``, and what one target measures in one: the protocol's repeats and seconds
    shared out over the rounds (``max_seconds`` kept as a cap), a short warm-up before every block (the
    first round of a point warms up in full; measured without it, eager ran 1.8 times slower right
    after the pause), and back-to-back throughput only where a timed call synchronizes (GPU): on CPU
    the timed calls are back to back already. A point may run ``redo_rounds`` extra rounds to replace
    disturbed ones, or a third of its rounds when that is more: a minute of steal at the ship point
    dropped 12 of 27 rounds there. The rounds are spread over ``generations`` of worker processes."""
    block = {"warmup": 1, "warmup_seconds": min(bench.warmup_seconds, ROUND_WARMUP_SECONDS),
             "min_repeats": math.ceil(bench.min_repeats / rounds), "min_seconds": bench.min_seconds / rounds,
             "max_seconds": bench.max_seconds / rounds, "cv_threshold": bench.cv_threshold,
             "throughput_seconds": 0.0 if device == "cpu" else bench.throughput_seconds / rounds}
    return RoundPlan(rounds=rounds, pause_seconds=bench.pause_seconds, max_steal=bench.max_steal,
                     max_others=bench.max_others_cpu, max_redo=max(bench.redo_rounds, rounds // 3),
                     interval_tolerance=bench.interval_tolerance, generations=min(generations, rounds),
                     block=block, max_baseline_spread=bench.max_baseline_spread,
                     max_round_spread=bench.max_round_spread)


def grid_row(blocks: list[dict[str, Any]], batch: int, seq: int, plan: RoundPlan,
             problem: str | None = None, tokens_per_row: int | None = None) -> BenchRow:
    """A report ROW from one target's blocks at a point: percentiles over every timed call of the
    rounds that count, and throughput from back-to-back calls (or the timed calls, on CPU); unstable when
    its round medians spread past ``plan.max_round_spread``; with the point's ``problem``, not measured.
    Tokens per second count ``tokens_per_row`` per row and call (default ``seq``; a decode step: 1)."""
    times = [t for block in blocks for t in block["latencies_ms"]]
    row = cast(BenchRow, summarize(times, plan.block.get("cv_threshold", 0.10)))
    medians = np.asarray([np.median(b["latencies_ms"]) for b in blocks], dtype=np.float64)
    spread = float(np.subtract(*np.percentile(medians, [75, 25])) / np.median(medians))
    row["round_spread"], row["unstable"] = spread, spread > plan.max_round_spread
    row["unstable_reasons"] = [f"its round medians spread {spread:.0%} (interquartile range over the median), "
                               f"past {plan.max_round_spread:.0%}"] if row["unstable"] else []
    if all("throughput_calls" in block for block in blocks):
        calls, seconds = sum(b["throughput_calls"] for b in blocks), sum(b["throughput_seconds"] for b in blocks)
    else:
        calls, seconds = len(times), sum(times) / 1e3
    gpu = [b["peak_gpu_mb"] for b in blocks if b.get("peak_gpu_mb") is not None]
    tokens = calls * batch * (tokens_per_row or seq)
    extra: BenchRow = {"round_p50_ms": [float(np.median(b["latencies_ms"])) for b in blocks], "batch": batch,
                       "seq": seq, "throughput": calls * batch / seconds, "tokens_per_s": tokens / seconds,
                       "throughput_calls": calls, "rounds": len(blocks),
                       "peak_rss_mb": max(b["peak_rss_mb"] for b in blocks), "peak_gpu_mb": max(gpu) if gpu else None}
    row.update(extra)
    if problem is not None:
        row["measured"], row["unstable"] = False, True
        row["unstable_reasons"] = [*row.get("unstable_reasons", []), f"not measured: {problem}"]
    return row


def round_plans(bench: BenchSpec, device: str, ship_point: Point | None,
                grid: Sequence[Point] | None = None) -> dict[Point, RoundPlan]:
    """Each point's plan (of ``grid``, default the recipe's): ``bench.rounds``, and at the ship point,
    where a verdict is drawn from the intervals, ``bench.ship_point_rounds`` over
    ``bench.ship_point_generations`` generations of worker processes. Measured here: 8 rounds gave int8
    over eager [2.46, 3.25] on a shared 2-core machine, 24 rounds of shorter blocks [2.90, 3.42] at about
    1.7 times the cost; but three runs of 24 rounds in one generation each had medians 2.93, 2.44 and
    2.70, and two of the three intervals missed another run's median: the spread between processes
    is the larger part. Over two generations, two of six intervals still missed another run's median;
    over three generations of 8 rounds, three runs gave 2.87, 2.89 and 2.92, each interval holding the
    other two medians."""
    plans = {}
    for point in grid or grid_points(bench, ship_point):
        if point == ship_point:
            plans[point] = round_plan(bench, device, bench.ship_point_rounds, bench.ship_point_generations)
        else:
            plans[point] = round_plan(bench, device, bench.rounds)
    return plans


def measure_session(launches: list[Launch], plans: dict[Point, RoundPlan], timeout: float) -> Benchmarks:
    """Start every target's worker, measure every grid point in interleaved rounds (in the order of
    ``plans``; a point of several generations starts every worker again between them), then each
    target's extras (best batch, memory, real data, generation) one target at a time."""
    failed: dict[str, str] = {}
    results: dict[str, BenchResult] = {launch.name: {"target": launch.name, "rows": []} for launch in launches}
    ratios: list[Ratio] = []
    unmeasured: list[Ratio] = []
    with started(launches, timeout, failed) as workers, stage("bench", len(plans) + len(workers)) as advance:
        for worker in workers:
            result = results[worker.name]
            result["load_seconds"] = worker.ready.get("load_seconds")
            result["load_cpu_seconds"] = worker.ready.get("load_cpu_seconds")
            result["fingerprint"] = worker.ready.get("fingerprint")

        def measuring(point: Point) -> list[Worker]:
            return [worker for worker in workers if worker.name not in failed and worker.measures(point)]

        def fresh(point: Point) -> list[Worker]:
            workers.restart()
            return measuring(point)

        for (batch, seq), plan in plans.items():
            live = measuring((batch, seq))
            spread = f" over {plan.generations} generations of processes" if plan.generations > 1 else ""
            advance(f"b{batch} s{seq}: {len(live)} targets in {plan.rounds} interleaved rounds{spread}")
            rounds = measure_point_checked(live, (batch, seq), plan, BASELINE,
                                           lambda: sample([os.getpid(), *workers.pids()]),
                                           restart=partial(fresh, (batch, seq)))
            failed.update(rounds.failed)
            for worker in live:
                blocks = rounds.blocks(worker.name)
                if worker.name in failed or not blocks:
                    continue
                decode = worker.launch.spec.get("decoder_points") == "decode" and "cache" in worker.launch.spec
                results[worker.name]["rows"].append(grid_row(blocks, batch, seq, plan, rounds.problem,
                                                             1 if decode else None))
                entry = ratio_entry(rounds, worker.name, BASELINE, plan.interval_tolerance, plan.min_rounds)
                if worker.name != BASELINE and BASELINE not in failed and entry is not None:
                    (ratios if entry["measured"] else unmeasured).append(entry)
        for worker in workers:
            if worker.name in failed or not worker.launch.extras:
                advance(f"{worker.name}: no extras")
                continue
            advance(f"{worker.name}: {extras_text(worker.launch.spec)} (own process)")
            try:
                results[worker.name].update(cast(BenchResult, worker.request("extras")))
            except BlockFailed as exc:
                failed[worker.name] = str(exc)
    for name, why in failed.items():
        results[name]["error"] = why
    return Benchmarks(results, ratios, unmeasured)


def extras_text(spec: WorkerSpec) -> str:
    """What a target's extras measure: 'best batch, memory, real data'."""
    parts = [text for key, text in (("best_batch", "best batch"), ("memory", "memory"), ("generation", "generation"),
                                    ("real_data", "real data")) if key == "memory" or spec.get(key)]
    return ", ".join(parts)


def ship_point(recipe: Recipe) -> Point | None:
    """The point the ship rule decides at (``ship.fastest_at``), if the recipe names one."""
    point = recipe.ship.fastest_at
    return (point[0], point[1]) if point is not None else None


def _whole_session(previous: dict[str, BenchResult | None], saved: dict[str, Any] | None,
                   keys: dict[str, str]) -> bool:
    """Whether the cached results are one session of exactly these targets, none of them failed."""
    if not saved or not saved.get("session"):
        return False
    return all(result is not None and result.get("key") == keys[name] and not result.get("error")
               and result.get("session") == saved["session"] for name, result in previous.items())


def failed_step_points(recipe: Recipe) -> frozenset[Point]:
    """The one point a step that failed its gate is measured at: the ship point when the grid holds it,
    else the grid's first point."""
    point = ship_point(recipe)
    grid = grid_points(recipe.bench, point)
    return frozenset({point if point in grid else grid[0]})


def benchmark(recipe: Recipe, handle: ModelHandle, artifacts: dict[str, Artifact], folder: Path,
              force: bool = False, measure: bool = True, failed_gate: frozenset[str] = frozenset()) -> Benchmarks:
    """The benchmark session of 'eager' and every step: re-used from cache when whole unless ``force``;
    without ``measure``, only a whole cached session is returned (else an empty one). A step in
    ``failed_gate`` cannot ship, so unless ``bench.failed_steps`` is ``grid`` it is measured at one
    point only, to show what its failure would have bought, and without the extras.

    ``artifacts``: eager's and every step's, in the order of the chain; results are kept in ``folder``."""
    bench = recipe.bench
    targets = [BASELINE, *[name for name in artifacts if name != BASELINE]]
    one_point = failed_gate if bench.failed_steps == "ship_point" else frozenset()
    keys = {target: bench_key(recipe, artifacts[target], target in one_point) for target in targets}
    previous = {target: cast(BenchResult | None, read_record(folder / f"{target}.json", "benchmark result"))
                for target in targets}
    saved = read_record(folder / "ratios.json", "benchmark record")
    if not force and _whole_session(previous, saved, keys):
        assert saved is not None
        return Benchmarks({t: r for t, r in previous.items() if r is not None}, saved["ratios"],
                          saved.get("not_measured", []))
    if not measure:
        return Benchmarks()
    points = failed_step_points(recipe)
    launches = [Launch(target, worker_spec(recipe, handle, target, artifacts[target]),
                       points=points if target in one_point else None, extras=target not in one_point)
                for target in targets]
    plans = round_plans(bench, recipe.device, ship_point(recipe))
    outcome = measure_session(launches, plans, bench.timeout_seconds)
    session = uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        result = outcome.results[target]
        result["key"], result["session"], result["cv_threshold"] = keys[target], session, bench.cv_threshold
        flag_reruns(result, previous[target], bench.rerun_tolerance)
        if result.get("error"):
            log.warning("bench %s failed: %s", target, result["error"])
        write_record(folder / f"{target}.json", dict(result))
    write_record(folder / "ratios.json", {"session": session, "baseline": BASELINE, "ratios": outcome.ratios,
                                          "not_measured": outcome.unmeasured})
    return outcome
