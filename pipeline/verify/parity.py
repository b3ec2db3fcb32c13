"""Parity of every artifact against eager PyTorch, the gate, and blame (which pass added the error)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from pipeline.core.artifact import Artifact
from pipeline.core.errors import PipelineError, described
from pipeline.core.progress import stage
from pipeline.model.cache import cache_layout, comparable
from pipeline.model.loading import ModelHandle
from pipeline.model.sentence import TOKEN_EMBEDDINGS, SentenceHead
from pipeline.recipe.schema import AccuracySpec, Tolerance
from pipeline.runtime.runner import ModelFn, Outputs, Runner
from pipeline.verify.accuracy import AccuracyScore, label_ids, load_labeled, score
from pipeline.verify.batching import failures as batch_failures
from pipeline.verify.batching import invariance
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.decoding import judge_decoding
from pipeline.verify.embedding import embedding_head, embedding_parity
from pipeline.verify.metrics import combine, compare

if TYPE_CHECKING:
    from pipeline.engine.chain import Step
    from pipeline.recipe.load import Recipe

log = logging.getLogger(__name__)
MASK = "attention_mask"


@dataclass
class Parity:
    """Verdict of one artifact: its metrics per output, the tolerance, and what missed."""

    passed: bool
    metrics: dict[str, dict[str, Any]]
    tolerance: dict[str, dict[str, float | None]]
    failures: list[str] = field(default_factory=list)
    exempt: bool = False
    vs_parent: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_case: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    generation: dict[str, Any] | None = None
    perplexity: dict[str, Any] | None = None  # a decoder's on the held-out text, against eager's
    batch_invariance: dict[str, dict[str, Any]] = field(default_factory=dict)
    embedding: dict[str, Any] | None = None  # the pooled sentence embedding against SentenceTransformer's

    def to_json(self) -> dict[str, Any]:
        """The ``parity`` entry of report.json."""
        out: dict[str, Any] = {"passed": self.passed, "metrics": self.metrics, "tolerance": self.tolerance,
                               "failures": self.failures, "vs_parent": self.vs_parent, "cases": self.per_case,
                               "batch_invariance": self.batch_invariance}
        if self.exempt:
            out["exempt"] = True
        if self.generation is not None:
            out["generation"] = self.generation
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity
        if self.embedding is not None:
            out["embedding"] = self.embedding
        return out


def run_cases(fn: ModelFn, cases: list[Case]) -> tuple[list[Outputs], list[str]]:
    """Outputs of a model on every reference case, and one line per case it could not run."""
    outputs, errors = [], []
    for case in cases:
        shape = "x".join(str(d) for d in next(iter(case.inputs.values())).shape)
        try:
            outputs.append(fn(case.inputs))
        except Exception as exc:  # an artifact that cannot run on an input fails there, with the reason
            errors.append(f"case {case.name} ({shape}): does not run: {described(exc)}")
            outputs.append({})
    return outputs, errors


def cannot_run(errors: list[str], exempt: bool) -> Parity:
    """The verdict of an artifact that failed to open or to run on some cases."""
    return Parity(passed=False, metrics={}, tolerance={}, failures=errors, exempt=exempt)


def _per_case(cases: list[Case], expected: list[Outputs], actual: list[Outputs], classification: bool
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics by output, then by case name."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for case, ref, out in zip(cases, expected, actual, strict=True):
        mask = case.inputs.get(MASK)
        decoder = case.has_cache  # a decoder's outputs align differently
        for name, value in ref.items():
            if name not in out:
                table.setdefault(name, {})[case.name] = {"shape_mismatch": "missing output", "max_abs": math.inf}
                continue
            want, kept = comparable(name, value, mask) if decoder else (value, mask)
            got = comparable(name, out[name], mask)[0] if decoder else out[name]
            metrics = compare(want, got, kept, classification)
            table.setdefault(name, {})[case.name] = metrics
    return table


def _combined(per_case: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {name: combine(list(cases.values())) for name, cases in per_case.items()}


def failures(metrics: dict[str, dict[str, Any]], tolerance: dict[str, Tolerance]) -> list[str]:
    """Each way the metrics miss their output's tolerance: 'output: metric value vs bound (by how much)'."""
    missed = []
    for name, m in metrics.items():
        tol = tolerance[name]
        if "shape_mismatch" in m:
            missed.append(f"{name}: shape {m['shape_mismatch']}")
            continue
        for bad in ("nan", "inf"):
            if m.get(bad):
                missed.append(f"{name}: {m[bad]} {bad.upper()} values")
        if tol.max_abs is not None and m["max_abs"] > tol.max_abs:
            missed.append(f"{name}: max_abs {m['max_abs']:.3g} > {tol.max_abs:.3g} "
                          f"(by {m['max_abs'] - tol.max_abs:.3g})")
        if tol.min_cosine is not None and m["cos_min"] < tol.min_cosine:
            missed.append(f"{name}: cos_min {m['cos_min']:.6f} < {tol.min_cosine:.6f} "
                          f"(by {tol.min_cosine - m['cos_min']:.3g})")
        if tol.min_top1 is not None and m.get("top1_agreement", 1.0) < tol.min_top1:
            missed.append(f"{name}: top1_agreement {m['top1_agreement']:.4f} < {tol.min_top1:.4f} "
                          f"(by {tol.min_top1 - m['top1_agreement']:.3g})")
    return missed


def check(cases: list[Case], actual: list[Outputs], parent: list[Outputs] | None,
          tolerance_of: Callable[[str], Tolerance], classification: bool = False, exempt: bool = False,
          head: SentenceHead | None = None) -> Parity:
    """Compare an artifact's outputs with eager (the gate) and with its parent artifact (blame); and, where the
    reference holds embedding cases, its token embeddings pooled by ``head`` with SentenceTransformer's.

    The embedding cases (texts at the model's max_seq_length, which may be past every shape the recipe names) are
    judged on the pooled embedding alone; their token metrics are reported beside it, not gated."""
    raw = [i for i, case in enumerate(cases) if case.kind is not CaseKind.EMBEDDING]
    raw_cases, raw_actual = [cases[i] for i in raw], [actual[i] for i in raw]
    per_case = _per_case(raw_cases, [case.outputs for case in raw_cases], raw_actual, classification)
    metrics = _combined(per_case)
    tolerance = {name: tolerance_of(name) for name in metrics}
    batch = invariance(cases, actual)
    missed = failures(metrics, tolerance) + batch_failures(batch, lambda name: tolerance[name].min_batch_cosine)
    embedding, embedding_missed = embedding_parity(
        cases, actual, head, (tolerance.get(TOKEN_EMBEDDINGS) or tolerance_of(TOKEN_EMBEDDINGS)).min_embedding_cosine)
    missed += embedding_missed
    vs_parent = (_combined(_per_case(raw_cases, [parent[i] for i in raw], raw_actual, classification))
                 if parent is not None else {})
    # a model without embedding cases, or without a cache, reports the tolerance it always did
    hidden = set() if embedding is not None else {"min_embedding_cosine"}
    if not any(case.has_cache for case in cases):
        hidden |= {"min_sequences_equal", "max_perplexity_increase"}
    return Parity(passed=not missed, metrics=metrics,
                  tolerance={name: tol.model_dump(exclude=hidden or None) for name, tol in tolerance.items()},
                  failures=missed, exempt=exempt, vs_parent=vs_parent, per_case=per_case, batch_invariance=batch,
                  embedding=embedding)


class Blame(TypedDict):
    """The step that added the most error over its parent, on which output, and how much."""

    step: str
    parent: str | None
    output: str
    max_abs_added: float


def blame(parities: dict[str, Parity], parents: dict[str, str]) -> Blame | None:
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


def check_decoding(parity: Parity, fn: ModelFn, decoding: list[Case], handle: ModelHandle, new_tokens: int,
                   tolerance: Tolerance) -> None:
    """The token gate (greedy tokens, perplexity) on the decoding cases; what misses fails the verdict."""
    verdict = judge_decoding(fn, decoding, cache_layout(handle.hf_config), new_tokens, tolerance)
    parity.generation, parity.perplexity = verdict.generation, verdict.perplexity
    if verdict.failures:
        parity.passed = False
        parity.failures.extend(verdict.failures)


def verify_all(recipe: Recipe, steps: list[Step], handle: ModelHandle, artifacts: dict[str, Artifact],
               cases: list[Any], prompts: list[Case] | None = None) -> tuple[dict[str, Parity], dict[str, list[Any]]]:
    """Parity of every step's artifact against eager and against its parent, with the token gate on
    ``prompts``, the decoding cases (text-generation); and every output computed."""
    runner = Runner(handle, recipe.device, threads=recipe.bench.threads)
    outputs: dict[str, list[Any]] = {"eager": [case.outputs for case in cases]}
    verdicts = {}
    with stage("verify", len(steps)) as advance:
        for step in steps:
            advance(f"{step.folder} on {len(cases)} cases")
            verdicts[step.name] = _verify_step(step, artifacts[step.name], runner, cases, outputs, recipe, prompts)
    return verdicts, outputs


def _verify_step(step: Step, artifact: Artifact, runner: Runner, cases: list[Case], outputs: dict[str, list[Any]],
                 recipe: Recipe, prompts: list[Case] | None) -> Parity:
    """One step's verdict; its outputs join ``outputs`` so its children can be compared with it."""
    exempt = step.name in recipe.verify.exempt
    try:
        fn = runner.open(artifact)
    except PipelineError:
        raise
    except Exception as exc:  # an artifact that cannot be opened fails its gate, with the reason
        return cannot_run([f"does not load: {described(exc)}"], exempt)
    results, errors = run_cases(fn, cases)
    if errors:
        return cannot_run(errors, exempt)
    outputs[step.name] = results
    parent = outputs.get(step.source) if step.source != "eager" else None
    parity = check(cases, results, parent,
                   lambda output: recipe.verify.tolerance_for(step.name, artifact.precision, output),
                   recipe.task == "text-classification", exempt=exempt, head=embedding_head(recipe, runner.handle))
    if prompts:
        check_decoding(parity, fn, prompts, runner.handle, recipe.verify.generation.new_tokens,
                       recipe.verify.tolerance_for(step.name, artifact.precision, "logits"))
    return parity


def labels_of(spec: AccuracySpec, handle: ModelHandle) -> Any:
    """Class indices of the labeled file's examples (bad labels are bad input)."""
    _, raw = load_labeled(handle.base_dir / spec.file, spec)
    config = handle.hf_config
    return label_ids(raw, getattr(config, "label2id", None), int(getattr(config, "num_labels", 2)))


def measure_accuracy(spec: AccuracySpec | None, handle: ModelHandle, cases: list[Any],
                     outputs: dict[str, list[Any]]) -> dict[str, AccuracyScore]:
    """Task accuracy of eager and of every artifact that ran, on the labeled file of ``spec`` (the
    recipe's ``verify.accuracy``), judged on the model's first output."""
    if spec is None:
        return {}
    labels = labels_of(spec, handle)
    picked = [i for i, case in enumerate(cases) if case.kind is CaseKind.ACCURACY]
    output = handle.output_names[0]
    eager = [outputs["eager"][i][output] for i in picked]
    scores = {"eager": score(eager, labels)}
    for name, results in outputs.items():
        if name != "eager":
            scores[name] = score([results[i][output] for i in picked], labels, eager)
    return scores
