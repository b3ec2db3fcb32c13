"""The whole run, top to bottom: validate, reference, chain, verify, choose, report.

The order matters: everything that can reject the input runs before anything is written; the
eager reference is computed from a fresh model before any exporter touches one; verification
runs after the chain so a cached chain still gets checked against the current reference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pipeline.bench.orchestrate import benchmark
from pipeline.core.artifact import Artifact, Format, load_cached
from pipeline.core.disk import disk_full, is_disk_full
from pipeline.core.errors import PipelineError, RecipeError
from pipeline.core.output_folder import check_output_folder, claimed, output_folder
from pipeline.core.seal import read_record, write_record
from pipeline.core.store import canonical_json, sha256_text
from pipeline.engine.context import make_context
from pipeline.engine.manager import PlannedStep, check_steps, plan, rebuild_steps, run_chain
from pipeline.engine.pass_api import Gate, GateResult, IOSpec
from pipeline.engine.results import Prepared, RunResult
from pipeline.model.cache import with_cache
from pipeline.model.inputs import load_sentences
from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import Recipe, Step, build_steps, load_recipe
from pipeline.report.write import write_reports
from pipeline.runtime.runner import Runner
from pipeline.ship.bundle import build_bundle
from pipeline.ship.rule import batch_dependence, choose_shipped, may_ship
from pipeline.verify.cases import Case, split_generation
from pipeline.verify.metrics import worst
from pipeline.verify.parity import Parity, blame, check, labels_of, measure_accuracy, run_cases, verify_all
from pipeline.verify.reference import check_shape_limits, reference, reference_key

log = logging.getLogger(__name__)


def prepare(recipe_path: Path, overrides: list[str] | None = None, out: Path | None = None,
            force: bool = False) -> Prepared:
    """Load and validate the recipe, the chain, the model's whereabouts, every pass's config and the
    output folder (``force``: write into a folder this tool did not make)."""
    recipe = load_recipe(recipe_path, overrides)
    steps = build_steps(recipe)
    base_dir = Path.cwd()
    handle = ModelHandle(recipe.model, recipe.task, recipe.inputs.names, recipe.output_names, base_dir)
    axes = recipe.dynamic_axes
    if recipe.task == "text-generation":  # the cache tensors join the inputs and outputs
        _, axes = with_cache(handle, axes)
    io = IOSpec(input_names=handle.input_names, output_names=handle.output_names, dynamic_axes=axes,
                export_batch=recipe.inputs.export_batch, export_seq=recipe.inputs.export_seq)
    corpus = recipe.inputs.corpus_path
    if not corpus.is_absolute():
        corpus = base_dir / corpus
    if recipe.inputs.corpus and not corpus.exists():
        raise RecipeError(f"inputs.corpus: file {recipe.inputs.corpus} does not exist")
    if recipe.inputs.corpus:
        load_sentences(corpus, key="inputs.corpus")
    ctx = make_context(handle, io, base_dir, corpus=corpus, seed=recipe.inputs.seed, device=recipe.device)
    check_shape_limits(recipe, handle)
    ctx.gate_digest = sha256_text(reference_key(recipe, handle, base_dir)
                                  + canonical_json(recipe.verify.model_dump(mode="json")))
    if recipe.verify.accuracy is not None:
        labels_of(recipe.verify.accuracy, handle)
    check_steps(steps, ctx)
    _warn_on_weak_grid(recipe, handle)
    out_dir = output_folder(out, recipe.name)
    check_output_folder(out_dir, out, force)
    return Prepared(recipe, steps, ctx, plan(steps, ctx, out_dir), out_dir)


def _warn_on_weak_grid(recipe: Recipe, handle: ModelHandle) -> None:
    """A grid that only repeats the export shape, or hits a hidden size, can hide a baked-in axis."""
    seqs = {seq for _, seq in recipe.verify.shapes}
    config = handle.hf_config
    sizes = {getattr(config, key, None) for key in ("hidden_size", "dim", "num_attention_heads")} - {None}
    if recipe.verify.shapes and not seqs - {recipe.inputs.export_seq}:
        log.warning("verify.shapes: every sequence length equals the export length %d; a baked-in "
                    "sequence axis would go unnoticed", recipe.inputs.export_seq)
    if seqs & sizes:
        log.warning("verify.shapes: sequence length %s equals a hidden size of the model; a swapped axis "
                    "could go unnoticed", sorted(seqs & sizes))
    if recipe.verify.shapes and min(batch for batch, _ in recipe.verify.shapes) > 1:
        log.warning("verify.shapes: no shape at batch 1")


def make_gate(prepared: Prepared, step: str, cases: list[Case], fmt: Format = Format.ONNX) -> Gate:
    """The parity gate of one step, for a pass that checks its own candidates (files of ``fmt``) against eager."""
    recipe = prepared.recipe

    def gate(path: Path, precision: str) -> GateResult:
        run_model = Runner(prepared.ctx.model, recipe.device, threads=recipe.bench.threads).open(
            Artifact(step=step, format=fmt, key="candidate", path=path, meta={"precision": precision}))
        outputs, errors = run_cases(run_model, cases)
        if errors:
            return GateResult(False, errors, -1.0, float("inf"))
        parity = check(cases, outputs, None, lambda output: recipe.verify.tolerance_for(step, precision, output),
                       recipe.task == "text-classification")
        return GateResult(parity.passed, parity.failures, worst(parity.metrics, "cos_min", min),
                          worst(parity.metrics, "max_abs", max))

    return gate


def _load_built(prepared: Prepared) -> dict[str, Artifact]:
    missing = [item.step.folder for item in prepared.planned if not item.cached]
    if missing:
        raise RecipeError(f"{prepared.out_dir}: no valid artifact for {', '.join(missing)}; run optimize first")
    artifacts = {"eager": Artifact(step="eager", format=Format.EAGER, key=prepared.ctx.model.source_key)}
    for item in prepared.planned:
        artifact = load_cached(item.folder, item.key)
        if artifact is None:
            raise RecipeError(f"{item.folder}: the artifact changed since it was planned; run optimize again")
        artifacts[item.step.name] = artifact
    return artifacts


BenchMode = Literal["skip", "reuse", "cached", "force"]


def run(prepared: Prepared, build: bool = True, bench: BenchMode = "cached") -> RunResult:
    """Build (or load) every artifact, verify, benchmark, choose what ships, bundle it, write reports.

    ``bench``: skip; reuse cached results only; cached results else measure; force a new measurement.
    """
    try:
        with claimed(prepared.out_dir, prepared.recipe.name) as waited:
            if waited:  # the run we waited for may have built (or removed) steps since the plan was made
                prepared.planned = plan(prepared.steps, prepared.ctx, prepared.out_dir)
            return _run_claimed(prepared, build, bench)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, PipelineError):
            raise disk_full(exc, prepared.out_dir) from None
        raise


def _run_claimed(prepared: Prepared, build: bool, bench: BenchMode) -> RunResult:
    recipe, ctx = prepared.recipe, prepared.ctx
    passed_before = passed_last_time(prepared.out_dir)
    # The reference comes first: a fresh eager model, before any exporter has touched one.
    cases, prompts = split_generation(
        reference(recipe, ctx.model, prepared.out_dir / "reference", ctx.base_dir, recipe.device))
    cached: dict[str, bool] = {}

    def gate_for(step: Step) -> Gate:
        return make_gate(prepared, step.name, cases, step.pass_cls.produces)

    if build:
        artifacts = run_chain(prepared.planned, ctx, lambda item, _a, hit: cached.__setitem__(item.step.name, hit),
                              gate_for=gate_for)
    else:
        artifacts = _load_built(prepared)
        cached = {step.name: True for step in prepared.steps}
    # Verification runs even on cached artifacts: the reference may be new.
    parity, outputs = verify_all(prepared, artifacts, cases, prompts)
    rebuilt = _suspect_steps(prepared, parity, cached, passed_before) if build else []
    if rebuilt:  # a cached file that passed before and fails now was changed on disk: rebuild it once
        for item in rebuilt:
            log.warning("%s: the cached artifact fails its gate, where it passed before with the same cache key; "
                        "rebuilding it from its parent once", item.step.folder)
        artifacts.update(rebuild_steps(rebuilt, artifacts, ctx, gate_for))
        cached.update({item.step.name: False for item in rebuilt})
        parity, outputs = verify_all(prepared, artifacts, cases, prompts)
    remember_passed(prepared.out_dir, {item.step.name: item.key for item in prepared.planned
                                       if item.step.name in parity and parity[item.step.name].passed})
    result = RunResult(prepared, artifacts, parity, None, cached,
                       blame(parity, {s.name: s.source for s in prepared.steps}),
                       measure_accuracy(prepared, cases, outputs), rebuilt=[item.step.name for item in rebuilt])
    # Benchmarks come after verification and before the choice: the fastest passing step may ship.
    if bench != "skip" and recipe.bench.enabled:
        failed_gate = frozenset(step.name for step in prepared.steps if not may_ship(parity, step.name))
        measured = benchmark(prepared, artifacts, force=bench == "force", measure=bench != "reuse",
                             failed_gate=failed_gate)
        result.bench, result.ratios = measured.results, measured.ratios
    result.shipped, result.ship_note = choose_shipped(prepared, parity, result.bench, result.ratios)
    if result.shipped is not None:
        dependence = batch_dependence(parity.get(result.shipped), str(artifacts[result.shipped].precision))
        if dependence:
            log.warning("%s", dependence)
            result.ship_note = "; ".join(filter(None, [result.ship_note, dependence]))
    if result.ship_note:
        log.info("%s", result.ship_note)
    if result.shipped is not None:
        result.bundle = build_bundle(result)
    write_reports(result)
    return result


PASSED = ".passed.json"  # the run's own record of which step passed its gate with which cache key


def passed_last_time(out_dir: Path) -> dict[str, str]:
    """Cache key of every step that passed its gate in the folder's last run, by step name (the sealed
    record the run keeps for this; its report is written for people and tools, and never read back)."""
    record = read_record(out_dir / PASSED, "record of passing steps") or {}
    passed = record.get("passed")
    if not isinstance(passed, dict):
        return {}
    return {str(name): key for name, key in passed.items() if isinstance(key, str)}


def remember_passed(out_dir: Path, passed: dict[str, str]) -> None:
    """Keep which steps passed their gate, with their cache keys, for the next run."""
    write_record(out_dir / PASSED, {"passed": passed})


def _suspect_steps(prepared: Prepared, parity: dict[str, Parity], cached: dict[str, bool],
                   passed_before: dict[str, str]) -> list[PlannedStep]:
    """Cached steps that fail their gate now, where the last report shows the same key passing."""
    return [item for item in prepared.planned
            if cached.get(item.step.name) and not may_ship(parity, item.step.name)
            and passed_before.get(item.step.name) == item.key]
