"""A step's parity gate, for a pass that checks its own candidates against eager before it settles on one
(a repair): the same cases and tolerances that verification applies to the step's artifact."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.artifact import Artifact
from pipeline.engine.chain import Step
from pipeline.engine.pass_api import Gate, GateResult
from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import Recipe
from pipeline.runtime.runner import Runner
from pipeline.verify.cases import Case
from pipeline.verify.embedding import embedding_head
from pipeline.verify.metrics import worst
from pipeline.verify.parity import check, check_decoding, run_cases


def step_gate(recipe: Recipe, handle: ModelHandle, step: Step, cases: list[Case],
              decoding: list[Case] | None = None) -> Gate:
    """The gate of ``step``: runs a candidate file (of the format the step produces) on ``cases`` and judges
    it with the step's tolerance for the candidate's precision; a decoder's also by its tokens and
    perplexity on the ``decoding`` cases, as verification judges the step's artifact."""
    fmt = step.pass_cls.produces
    head = embedding_head(recipe, handle)

    def gate(path: Path, precision: str) -> GateResult:
        run_model = Runner(handle, recipe.device, threads=recipe.bench.threads).open(
            Artifact(step_folder=step.folder, format=fmt, key="candidate", path=path, meta={"precision": precision}))
        outputs, errors = run_cases(run_model, cases)
        if errors:
            return GateResult(False, errors, -1.0, float("inf"))
        parity = check(cases, outputs, None, lambda output: recipe.verify.tolerance_for(step.name, precision, output),
                       recipe.task == "text-classification", head=head)
        if decoding:
            check_decoding(parity, run_model, decoding, handle, recipe.verify.generation.new_tokens,
                           recipe.verify.tolerance_for(step.name, precision, "logits"))
        return GateResult(parity.passed, parity.failures, worst(parity.metrics, "cos_min", min),
                          worst(parity.metrics, "max_abs", max))

    return gate
