"""The whole run, top to bottom: reference, chain, verify, benchmark, choose, bundle, report.

The order matters: everything that can reject the input runs before anything is written
(pipeline.run.prepare); the eager reference is computed from a fresh model before any exporter
touches one; verification runs after the chain so a cached chain still gets checked against the
current reference.
"""

from __future__ import annotations

import logging
from typing import Literal

from pipeline.bench.orchestrate import benchmark, ship_point
from pipeline.core.artifact import Artifact, Format, load_cached
from pipeline.core.disk import disk_full, is_disk_full
from pipeline.core.errors import PipelineError, RecipeError
from pipeline.core.output_folder import claimed
from pipeline.engine.chain import Step
from pipeline.engine.manager import PlannedStep, plan, rebuild_steps, run_chain
from pipeline.engine.pass_api import Gate
from pipeline.report.outcome import RunResult
from pipeline.report.write import write_reports
from pipeline.run.passed import passed_last_time, remember_passed
from pipeline.run.prepare import Prepared
from pipeline.run.shipped import bundle_in_place, keep_a_measured_choice
from pipeline.runtime.threads import set_torch_threads
from pipeline.ship.bundle import SHIP_DIR, build_bundle
from pipeline.ship.rule import batch_dependence, choose_shipped, may_ship, slower_note
from pipeline.verify.cases import split_generation
from pipeline.verify.gate import step_gate
from pipeline.verify.parity import Parity, blame, measure_accuracy, verify_all
from pipeline.verify.reference import reference

log = logging.getLogger(__name__)


def _load_built(prepared: Prepared) -> dict[str, Artifact]:
    """Every step's cached artifact, for the commands that build nothing (verify, bench, ship)."""
    missing = [item.step.folder for item in prepared.planned if not item.cached]
    if missing:
        raise RecipeError(f"{prepared.out_dir}: no valid artifact for {', '.join(missing)}; run optimize first")
    artifacts = {"eager": Artifact(step_folder="eager", format=Format.EAGER, key=prepared.ctx.model.source_key)}
    for item in prepared.planned:
        artifact = load_cached(item.folder, item.key)
        if artifact is None:
            raise RecipeError(f"{item.folder}: the artifact changed since it was planned; run optimize again")
        artifacts[item.step.name] = artifact
    return artifacts


BenchMode = Literal["skip", "reuse", "cached", "force"]


def run(prepared: Prepared, build: bool = True, bench: BenchMode = "cached", ship: bool = True) -> RunResult:
    """Build (or load) every artifact, verify, benchmark, choose what ships, bundle it, write reports.

    ``bench``: skip; reuse cached results only; cached results else measure; force a new measurement.
    Without ``ship``, the bundle in the folder is left as it is (``verify``).
    """
    try:
        with claimed(prepared.out_dir, prepared.recipe.name) as waited:
            if waited:  # the run we waited for may have built (or removed) steps since the plan was made
                prepared.planned = plan(prepared.steps, prepared.ctx, prepared.out_dir)
            return _run_claimed(prepared, build, bench, ship)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, PipelineError):
            raise disk_full(exc, prepared.out_dir) from None
        raise


def _run_claimed(prepared: Prepared, build: bool, bench: BenchMode, ship: bool) -> RunResult:
    recipe, ctx = prepared.recipe, prepared.ctx
    set_torch_threads(recipe.bench.threads)  # once for the run: the reference, the passes and verification
    passed_before = passed_last_time(prepared.out_dir)
    # The reference comes first: a fresh eager model, before any exporter has touched one.
    cases, prompts = split_generation(
        reference(recipe, ctx.model, prepared.out_dir / "reference", ctx.base_dir, recipe.device))
    cached: dict[str, bool] = {}

    def gate_for(step: Step) -> Gate:
        return step_gate(recipe, ctx.model, step, cases, prompts)

    if build:
        artifacts = run_chain(prepared.planned, ctx, lambda item, _a, hit: cached.__setitem__(item.step.name, hit),
                              gate_for=gate_for)
    else:
        artifacts = _load_built(prepared)
        cached = {step.name: True for step in prepared.steps}
    # Verification runs even on cached artifacts: the reference may be new.
    parity, outputs = verify_all(recipe, prepared.steps, ctx.model, artifacts, cases, prompts)
    rebuilt = _suspect_steps(prepared, parity, cached, passed_before) if build else []
    if rebuilt:  # a cached file that passed before and fails now was changed on disk: rebuild it once
        for item in rebuilt:
            log.warning("%s: the cached artifact fails its gate, where it passed before with the same cache key; "
                        "rebuilding it from its parent once", item.step.folder)
        artifacts.update(rebuild_steps(rebuilt, artifacts, ctx, gate_for))
        cached.update({item.step.name: False for item in rebuilt})
        parity, outputs = verify_all(recipe, prepared.steps, ctx.model, artifacts, cases, prompts)
    remember_passed(prepared.out_dir, {item.step.name: item.key for item in prepared.planned
                                       if item.step.name in parity and parity[item.step.name].passed})
    result = RunResult(recipe, prepared.steps, ctx.model, prepared.out_dir, artifacts, parity, cached=cached,
                       blame=blame(parity, {s.name: s.source for s in prepared.steps}),
                       accuracy=measure_accuracy(recipe.verify.accuracy, ctx.model, cases, outputs),
                       rebuilt=[item.step.name for item in rebuilt])
    # Benchmarks come after verification and before the choice: the fastest passing step may ship.
    if bench != "skip" and recipe.bench.enabled:
        failed_gate = frozenset(step.name for step in prepared.steps if not may_ship(parity, step.name))
        measured = benchmark(recipe, ctx.model, artifacts, prepared.out_dir / "bench", force=bench == "force",
                             measure=bench != "reuse", failed_gate=failed_gate)
        result.bench, result.ratios, result.unmeasured = measured.results, measured.ratios, measured.unmeasured
    result.shipped, result.ship_note = choose_shipped(recipe.ship, [s.name for s in prepared.steps], parity,
                                                      result.bench, result.ratios)
    kept = keep_a_measured_choice(result)
    _say_why(result)
    # a bundle already in the folder stays when it holds the shipped step (verify, or a kept choice), or
    # when it says all this run would write into it; otherwise it is written
    if result.shipped is not None and bundle_in_place(result, same_summaries=ship and not kept):
        result.bundle = result.out_dir / SHIP_DIR
    elif ship and result.shipped is not None:
        result.bundle = build_bundle(result)
    write_reports(result)
    return result


def _say_why(result: RunResult) -> None:
    """Say why the chosen step ships when that was not plain, when it is slower than eager or its parent,
    and when its rows depend on their batch more than its precision's default allows."""
    if result.shipped is not None:
        step = next(s for s in result.steps if s.name == result.shipped)
        bench = result.recipe.bench
        point = ship_point(result.recipe) or (min(bench.batches), max(bench.seqs))
        slower = slower_note(result.shipped, step.source, result.ratios, point)
        if slower and result.recipe.ship.step:
            slower += f" (it ships because the recipe names it: ship.step: {result.recipe.ship.step})"
        dependence = batch_dependence(result.parity.get(result.shipped),
                                      str(result.artifacts[result.shipped].precision))
        for warning in filter(None, [slower, dependence]):
            log.warning("%s", warning)
            result.ship_note = "; ".join(filter(None, [result.ship_note, warning]))
    if result.ship_note:
        log.info("%s", result.ship_note)


def _suspect_steps(prepared: Prepared, parity: dict[str, Parity], cached: dict[str, bool],
                   passed_before: dict[str, str]) -> list[PlannedStep]:
    """Cached steps that fail their gate now, where the run's record of what passed shows the same key passing."""
    return [item for item in prepared.planned
            if cached.get(item.step.name) and not may_ship(parity, item.step.name)
            and passed_before.get(item.step.name) == item.key]
