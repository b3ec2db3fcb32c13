"""Reference cases: a batch of inputs with eager's outputs for it, and what kind of check it feeds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from pipeline.model.cache import PAST_PREFIX
from pipeline.model.inputs import Inputs


class CaseKind(str, Enum):
    """What a case checks: one forward call (shapes, sentences, a decode step on eager's cache), a batch
    of labeled texts for task accuracy (also a forward call), a sentence alone or the same sentences in a
    padded batch (forward calls, compared with eager and with each other: batch invariance), texts tokenized
    as SentenceTransformer tokenizes them (a forward call judged on its output pooled by the model's head
    against SentenceTransformer's sentence embedding), a prompt whose greedy tokens are compared with eager
    ``generate``'s (prompts in, tokens out), or windows of a held-out text (the perplexity)."""

    FORWARD = "forward"
    ACCURACY = "accuracy"
    GENERATE = "generate"
    ALONE = "alone"  # one sentence, batch 1, no padding (a forward call)
    PADDED = "padded"  # the same sentences in one batch padded far past their length (a forward call)
    EMBEDDING = "embedding"  # texts truncated at max_seq_length; ``Case.embedding`` holds SentenceTransformer's
    PERPLEXITY = "perplexity"  # windows of a held-out text: each row's summed NLL, not one call's outputs

    def __str__(self) -> str:
        return self.value


@dataclass
class Case:
    """One batch of inputs with the eager outputs for it."""

    name: str
    inputs: Inputs
    outputs: dict[str, np.ndarray]
    kind: CaseKind = CaseKind.FORWARD
    embedding: np.ndarray | None = None  # EMBEDDING cases: SentenceTransformer's embeddings (batch, dim)

    @property
    def has_cache(self) -> bool:
        """Whether the inputs feed a decoder's KV cache (its outputs then align by position)."""
        return any(name.startswith(PAST_PREFIX) for name in self.inputs)


DECODING = (CaseKind.GENERATE, CaseKind.PERPLEXITY)


def split_generation(cases: list[Case]) -> tuple[list[Case], list[Case]]:
    """(forward cases, decoding cases): the latter hold prompts and eager's tokens, or text windows and
    eager's likelihoods, not one call's outputs."""
    return ([case for case in cases if case.kind not in DECODING],
            [case for case in cases if case.kind in DECODING])
