"""The whole run, top to bottom: validate, reference, chain, verify, choose, report.

The order matters: everything that can reject the input runs before anything is written; the
eager reference is computed from a fresh model before any exporter touches one; verification
runs after the chain so a cached chain still gets checked against the current reference.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.accuracy import PREFIX as ACCURACY_PREFIX
from pipeline.accuracy import label_ids, load_labeled, score
from pipeline.artifact import Artifact
from pipeline.context import make_context
from pipeline.errors import PipelineError, RecipeError
from pipeline.inputs import DEFAULT_CORPUS
from pipeline.manager import PlannedStep, check_steps, plan, run_chain
from pipeline.model import ModelHandle
from pipeline.pass_base import IOSpec, PassContext
from pipeline.recipe import Recipe, Step, build_steps, load_recipe
from pipeline.reference import check_shapes, reference
from pipeline.runtime import Runner
from pipeline.schema import AccuracySpec
from pipeline.verify import Parity, blame, cannot_run, check, run_cases

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A recipe validated in full, with its context and plan; nothing written yet."""

    recipe: Recipe
    steps: list[Step]
    ctx: PassContext
    planned: list[PlannedStep]
    out_dir: Path


@dataclass
class RunResult:
    """What a run produced: artifacts, parity verdicts, the shipped step, and the report dict."""

    prepared: Prepared
    artifacts: dict[str, Artifact]
    parity: dict[str, Parity] = field(default_factory=dict)
    shipped: str | None = None
    cached: dict[str, bool] = field(default_factory=dict)
    blame: dict[str, Any] | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare(recipe_path: Path, overrides: list[str] | None = None, out: Path | None = None) -> Prepared:
    """Load and validate the recipe, the chain, the model's whereabouts and every pass's config."""
    recipe = load_recipe(recipe_path, overrides)
    steps = build_steps(recipe)
    base_dir = Path.cwd()
    io = IOSpec(input_names=recipe.inputs.names, output_names=recipe.output_names,
                dynamic_axes=recipe.dynamic_axes, export_batch=recipe.inputs.export_batch,
                export_seq=recipe.inputs.export_seq)
    handle = ModelHandle(recipe.model, recipe.task, io.input_names, io.output_names, base_dir)
    corpus = Path(recipe.inputs.corpus) if recipe.inputs.corpus else DEFAULT_CORPUS
    if not corpus.is_absolute():
        corpus = base_dir / corpus
    if recipe.inputs.corpus and not corpus.is_file():
        raise RecipeError(f"inputs.corpus: file {recipe.inputs.corpus} does not exist")
    ctx = make_context(handle, io, base_dir, corpus=corpus, seed=recipe.inputs.seed, device=recipe.device)
    check_shapes(recipe, handle.max_positions)
    if recipe.verify.accuracy is not None:
        labels_of(recipe.verify.accuracy, handle)
    check_steps(steps, ctx)
    _warn_on_weak_grid(recipe, handle)
    out_dir = out if out is not None else Path("artifacts") / recipe.name
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


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder: a second run of the same recipe waits."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run holds %s; waiting for it", out_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def verify_all(prepared: Prepared, artifacts: dict[str, Artifact], cases: list[Any]
               ) -> tuple[dict[str, Parity], dict[str, list[Any]]]:
    """Parity of every step's artifact against eager and against its parent; and every output computed."""
    recipe = prepared.recipe
    runner = Runner(prepared.ctx.model, recipe.device, threads=recipe.bench.threads)
    outputs: dict[str, list[Any]] = {"eager": [case.outputs for case in cases]}
    verdicts = {}
    for step in prepared.steps:
        artifact = artifacts[step.name]
        exempt = step.name in recipe.verify.exempt
        log.info("verify %s on %d cases", step.folder, len(cases))
        try:
            fn = runner.open(artifact)
        except PipelineError:
            raise
        except Exception as exc:  # an artifact that cannot be opened fails its gate, with the reason
            verdicts[step.name] = cannot_run([f"does not load: {type(exc).__name__}: {exc}"], exempt)
            continue
        results, errors = run_cases(fn, cases)
        if errors:
            verdicts[step.name] = cannot_run(errors, exempt)
            continue
        outputs[step.name] = results
        parent = outputs.get(step.source) if step.source != "eager" else None
        verdicts[step.name] = check(
            cases, outputs[step.name], parent,
            lambda output, name=step.name, precision=artifact.precision:
                recipe.verify.tolerance_for(name, precision, output),
            recipe.task == "text-classification", exempt=exempt)
    return verdicts, outputs


def labels_of(spec: AccuracySpec, handle: ModelHandle) -> Any:
    """Class indices of the labeled file's examples (bad labels are bad input)."""
    _, raw = load_labeled(handle.base_dir / spec.file, spec)
    config = handle.hf_config
    return label_ids(raw, getattr(config, "label2id", None), int(getattr(config, "num_labels", 2)))


def measure_accuracy(prepared: Prepared, cases: list[Any], outputs: dict[str, list[Any]]) -> dict[str, Any]:
    """Task accuracy of eager and of every artifact that ran, on the recipe's labeled file."""
    spec = prepared.recipe.verify.accuracy
    if spec is None:
        return {}
    labels = labels_of(spec, prepared.ctx.model)
    picked = [i for i, case in enumerate(cases) if case.name.startswith(ACCURACY_PREFIX)]
    output = prepared.recipe.output_names[0]
    eager = [outputs["eager"][i][output] for i in picked]
    scores = {"eager": score(eager, labels)}
    for name, results in outputs.items():
        if name != "eager":
            scores[name] = score([results[i][output] for i in picked], labels, eager)
    return scores


def choose_shipped(prepared: Prepared, parity: dict[str, Parity]) -> str | None:
    """The step to ship: the one the recipe names, else the last step that passes; None if it fails."""
    wanted = prepared.recipe.ship.step
    candidates = [wanted] if wanted else [s.name for s in reversed(prepared.steps)]
    for name in candidates:
        verdict = parity.get(name)
        if verdict is not None and (verdict.passed or verdict.exempt):
            return name
    return None


def optimize(prepared: Prepared) -> RunResult:
    """Run the chain, verify every artifact, choose what ships. Writes under ``prepared.out_dir``."""
    recipe, ctx = prepared.recipe, prepared.ctx
    with run_lock(prepared.out_dir):
        # The reference comes first: a fresh eager model, before any exporter has touched one.
        cases = reference(recipe, ctx.model, prepared.out_dir / "reference", ctx.base_dir, recipe.device)
        ctx.extra["model"] = ctx.model.describe()
        cached: dict[str, bool] = {}
        artifacts = run_chain(prepared.planned, ctx, lambda item, _a, hit: cached.__setitem__(item.step.name, hit))
        parity, outputs = verify_all(prepared, artifacts, cases)
        result = RunResult(prepared, artifacts, parity, choose_shipped(prepared, parity), cached,
                           blame(parity, {s.name: s.source for s in prepared.steps}),
                           measure_accuracy(prepared, cases, outputs))
    return result


def verify_only(prepared: Prepared) -> RunResult:
    """Verify the artifacts an earlier run built, without running any pass."""
    from pipeline.artifact import Format, load_cached

    missing = [item.step.folder for item in prepared.planned if not item.cached]
    if missing:
        raise RecipeError(f"{prepared.out_dir}: no valid artifact for {', '.join(missing)}; run optimize first")
    recipe, ctx = prepared.recipe, prepared.ctx
    with run_lock(prepared.out_dir):
        cases = reference(recipe, ctx.model, prepared.out_dir / "reference", ctx.base_dir, recipe.device)
        artifacts = {"eager": Artifact(step="eager", format=Format.EAGER, key=ctx.model.source_key)}
        for item in prepared.planned:
            artifact = load_cached(item.folder, item.key)
            assert artifact is not None
            artifacts[item.step.name] = artifact
        parity, outputs = verify_all(prepared, artifacts, cases)
        return RunResult(prepared, artifacts, parity, choose_shipped(prepared, parity),
                         {s.name: True for s in prepared.steps},
                         blame(parity, {s.name: s.source for s in prepared.steps}),
                         measure_accuracy(prepared, cases, outputs))
