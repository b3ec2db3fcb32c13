"""Perplexity of a decoder on a held-out text, and how much an artifact raises it over eager's.

The text is tokenized once and cut into windows of a fixed number of tokens; each window is one
prefill (an empty cache, no padding), and every token but a window's first is predicted from the
ones before it. A window's outputs are reduced to the sum of the negative log-likelihoods of its
predicted tokens, so the reference stores a few numbers, not logits tens of thousands wide.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import RecipeError
from pipeline.model.cache import CacheLayout
from pipeline.model.inputs import Inputs

ModelFn = Callable[[Inputs], dict[str, np.ndarray]]
DEFAULT_TEXT = Path(__file__).parents[1] / "data" / "heldout.txt"


def text_windows(tokenizer: Any, text: str, window: int, batch: int, limit: int | None,
                 layout: CacheLayout) -> list[Inputs]:
    """The text's tokens (no special tokens) as batches of ``window``-token rows with an empty cache; the
    tail shorter than a window is left out."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = [ids[start:start + window] for start in range(0, len(ids) - window + 1, window)][:limit]
    if not rows:
        raise RecipeError(f"verify.perplexity: the text holds {len(ids)} tokens, fewer than one window of {window}")
    batches = []
    for start in range(0, len(rows), batch):
        tokens = np.asarray(rows[start:start + batch], dtype=np.int64)
        batches.append({"input_ids": tokens, "attention_mask": np.ones_like(tokens),
                        **layout.empty(tokens.shape[0])})
    return batches


def window_nll(logits: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    """Per row, the summed negative log-likelihood of tokens 1.. given the ones before (float64)."""
    scores = np.asarray(logits[:, :-1], dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    log_norm = top[..., 0] + np.log(np.exp(scores - top).sum(axis=-1))
    chosen = np.take_along_axis(scores, input_ids[:, 1:, None], axis=-1)[..., 0]
    return (log_norm - chosen).sum(axis=-1)


def window_outputs(fn: ModelFn, inputs: Inputs) -> dict[str, np.ndarray]:
    """What a perplexity case keeps of one call: each row's summed NLL and its count of predicted tokens."""
    ids = inputs["input_ids"]
    nll = window_nll(np.asarray(fn(inputs)["logits"]), ids)
    return {"nll": nll, "count": np.full(ids.shape[0], ids.shape[1] - 1, dtype=np.int64)}


def perplexity(outputs: list[dict[str, np.ndarray]]) -> tuple[float, int]:
    """(perplexity, predicted tokens) over every window."""
    nll = float(sum(float(out["nll"].sum()) for out in outputs))
    count = int(sum(int(out["count"].sum()) for out in outputs))
    return float(np.exp(nll / count)), count


def perplexity_change(eager: list[dict[str, np.ndarray]], artifact: list[dict[str, np.ndarray]]
                      ) -> dict[str, Any]:
    """Eager's and the artifact's perplexity on the same windows, and the artifact's relative increase."""
    base, count = perplexity(eager)
    value, _ = perplexity(artifact)
    return {"eager": base, "artifact": value, "increase": value / base - 1.0, "tokens": count}
