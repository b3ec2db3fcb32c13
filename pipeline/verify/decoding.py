"""The token gate of a decoder: what users see, judged against eager.

- greedy tokens against eager ``generate``'s on the corpus prompts, only the tokens a user sees (up to
  and including an end-of-text token): the share of tokens equal up to each sequence's first
  difference, and the share of sequences equal throughout;
- perplexity on a held-out text, as a relative increase over eager's.

The logits' cosine on prefill and decode steps is judged with every other output, on the forward
cases (pipeline.verify.parity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import described
from pipeline.model.cache import CacheLayout
from pipeline.recipe.schema import Tolerance
from pipeline.runtime.runner import ModelFn
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.greedy import greedy, token_match
from pipeline.verify.perplexity import perplexity_change, window_outputs


@dataclass
class DecodingVerdict:
    """Token match and perplexity of one artifact, and each bound they miss."""

    generation: dict[str, Any] | None = None
    perplexity: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)


def judge_decoding(fn: ModelFn, cases: list[Case], layout: CacheLayout, new_tokens: int,
                   tolerance: Tolerance) -> DecodingVerdict:
    """The token gate on the decoding cases (prompts with eager's tokens, text windows with eager's
    likelihoods) under ``tolerance`` (the bounds for the logits)."""
    verdict = DecodingVerdict()
    prompts = [case for case in cases if case.kind is CaseKind.GENERATE]
    windows = [case for case in cases if case.kind is CaseKind.PERPLEXITY]
    try:
        if prompts:
            verdict.generation = _tokens(fn, prompts, layout, new_tokens, tolerance, verdict.failures)
        if windows:
            verdict.perplexity = _perplexity(fn, windows, tolerance, verdict.failures)
    except Exception as exc:  # an artifact that cannot decode fails there, with the reason
        verdict.failures.append(f"greedy generation does not run: {described(exc)}")
    return verdict


def _tokens(fn: ModelFn, prompts: list[Case], layout: CacheLayout, new_tokens: int, tolerance: Tolerance,
            missed: list[str]) -> dict[str, Any]:
    tokens = [greedy(fn, case.inputs, layout, new_tokens) for case in prompts]
    visible = [case.outputs["visible"] for case in prompts] if all("visible" in c.outputs for c in prompts) else None
    match = {**token_match([case.outputs["tokens"] for case in prompts], tokens, visible),
             "new_tokens": new_tokens, "min_share": tolerance.min_token_match,
             "min_sequences_share": tolerance.min_sequences_equal}
    if tolerance.min_token_match is not None and match["share"] < tolerance.min_token_match:
        missed.append(f"token match: {match['matched']}/{match['tokens']} greedy tokens equal to eager's "
                      f"(share {match['share']:.4f} < {tolerance.min_token_match:.4f})")
    if tolerance.min_sequences_equal is not None and match["sequences_share"] < tolerance.min_sequences_equal:
        missed.append(f"token match: {match['sequences_equal']}/{match['sequences']} sequences equal to eager's "
                      f"(share {match['sequences_share']:.4f} < {tolerance.min_sequences_equal:.4f})")
    return match


def _perplexity(fn: ModelFn, windows: list[Case], tolerance: Tolerance, missed: list[str]) -> dict[str, Any]:
    change = perplexity_change([case.outputs for case in windows],
                               [window_outputs(fn, case.inputs) for case in windows])
    change["max_increase"] = tolerance.max_perplexity_increase
    bound = tolerance.max_perplexity_increase
    if bound is not None and not change["increase"] <= bound:  # NaN fails too
        missed.append(f"perplexity: {change['artifact']:.4f} against eager's {change['eager']:.4f} "
                      f"(+{change['increase']:.2%} > +{bound:.2%})")
    return change
