"""This project's token gate applied to a decoder peer: its greedy tokens on the recipe's corpus prompts
and its likelihoods on the held-out windows, against the eager reference, under the precision presets.

A peer that runs as one step (tokens, mask, cache) -> (logits, grown cache) goes through
``pipeline.verify.greedy.greedy`` and ``pipeline.verify.perplexity.window_outputs`` themselves; a peer
that only generates (optimum-intel) hands over its tokens and windows' likelihoods, computed in its own
environment by the same functions. Either way the same ``token_match`` and ``perplexity_change`` judge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.model.cache import CacheLayout
from pipeline.model.inputs import Inputs
from pipeline.recipe.schema import Tolerance
from pipeline.verify.cases import Case, CaseKind
from pipeline.verify.greedy import greedy, token_match
from pipeline.verify.perplexity import perplexity_change, window_outputs

ModelFn = Callable[[Inputs], dict[str, np.ndarray]]
PRESETS = ("int8", "int4")  # the presets every peer is judged under


def roll_rows(values: np.ndarray, shifts: np.ndarray, axis: int) -> np.ndarray:
    """Each row (first axis) rolled by its own shift along ``axis`` (of the whole array)."""
    out = np.empty_like(values)
    for row, shift in enumerate(shifts):
        out[row] = np.roll(values[row], int(shift), axis=axis - 1)
    return out


def right_padded(run: ModelFn, layout: CacheLayout) -> ModelFn:
    """``run``, which reads padding as GroupQueryAttention does (onnxruntime-genai's CPU models: each row's
    real positions first, its padding after), behind the project's left-padded step layout.

    Left-padded inputs reach it with every row rolled so that its real tokens, mask and cache come
    first; its logits and cache are rolled back (padded positions zeroed), so ``greedy`` and
    ``window_outputs`` see the layout they expect. Given left padding as it is, its padded rows come out
    wrong (the fp32 build matched eager's tokens on 0.63 of them); an unpadded batch passes as it is.
    """
    def call(inputs: Inputs) -> dict[str, np.ndarray]:
        mask = np.asarray(inputs["attention_mask"])
        if mask.all():
            return run(inputs)
        new = inputs["input_ids"].shape[1]
        past = mask.shape[1] - new
        pads = mask.shape[1] - mask.sum(axis=1)
        in_new, in_past = np.maximum(pads - past, 0), np.minimum(pads, past)
        moved = {"input_ids": roll_rows(inputs["input_ids"], -in_new, 1), "attention_mask": roll_rows(mask, -pads, 1),
                 **{name: roll_rows(inputs[name], -in_past, 2) for name in layout.past_names}}
        out = {}
        for name, value in run(moved).items():
            cache = name in layout.present_names
            shifts = pads if cache else in_new
            back = roll_rows(value, shifts, 2 if cache else 1)
            for row, count in enumerate(shifts):
                if cache:
                    back[row][:, :count] = 0
                else:
                    back[row][:count] = 0
            out[name] = back
        return out
    return call


def step_outputs(fn: ModelFn, cases: list[Case], layout: CacheLayout, new_tokens: int
                 ) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """A step model's greedy tokens on every prompt case and its outputs on every window case."""
    tokens = [greedy(fn, case.inputs, layout, new_tokens) for case in cases if case.kind is CaseKind.GENERATE]
    windows = [window_outputs(fn, case.inputs) for case in cases if case.kind is CaseKind.PERPLEXITY]
    return tokens, windows


def decoding_metrics(cases: list[Case], tokens: list[np.ndarray], windows: list[dict[str, np.ndarray]]
                     ) -> dict[str, Any]:
    """Token match (visible tokens only) and perplexity change against the reference cases."""
    prompts = [case for case in cases if case.kind is CaseKind.GENERATE]
    texts = [case for case in cases if case.kind is CaseKind.PERPLEXITY]
    if len(tokens) != len(prompts) or len(windows) != len(texts):
        raise ValueError(f"{len(tokens)} token batches and {len(windows)} windows for {len(prompts)} prompt and "
                         f"{len(texts)} window cases")
    metrics: dict[str, Any] = {}
    if prompts:
        metrics["generation"] = token_match([c.outputs["tokens"] for c in prompts], tokens,
                                            [c.outputs["visible"] for c in prompts])
    if texts:
        metrics["perplexity"] = perplexity_change([c.outputs for c in texts], windows)
    return metrics


def gate(metrics: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """The bounds of ``tolerance`` that ``metrics`` miss (empty: it passes)."""
    missed = []
    match, change = metrics.get("generation"), metrics.get("perplexity")
    if match is not None and tolerance.min_token_match is not None and match["share"] < tolerance.min_token_match:
        missed.append(f"token match {match['share']:.4f} < {tolerance.min_token_match:.4f}")
    if match is not None and tolerance.min_sequences_equal is not None \
            and match["sequences_share"] < tolerance.min_sequences_equal:
        missed.append(f"sequences equal {match['sequences_share']:.4f} < {tolerance.min_sequences_equal:.4f}")
    bound = tolerance.max_perplexity_increase
    if change is not None and bound is not None and not change["increase"] <= bound:  # NaN fails too
        missed.append(f"perplexity +{change['increase']:.2%} > +{bound:.2%}")
    return missed


def verdicts(metrics: dict[str, Any], tolerances: dict[str, Tolerance]) -> dict[str, dict[str, Any]]:
    """Per preset name: passed, and the bounds missed."""
    out = {}
    for name, tolerance in tolerances.items():
        missed = gate(metrics, tolerance)
        out[name] = {"passed": not missed, "failures": missed}
    return out
