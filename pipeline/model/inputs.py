"""Seeded, realistic model inputs: tokenized sentences with real padding, and random token grids.

Two kinds of inputs find different faults. Real sentences of varied length, batched with real
padding, show what users will see. Random token ids at (batch, sequence) shapes that differ from
the export shape show whether the dynamic axes are really dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import RecipeError
from pipeline.core.limits import MAX_SENTENCE_TOKENS, MAX_SENTENCES, text_lines

DEFAULT_CORPUS = Path(__file__).parents[1] / "data" / "sentences.txt"
Inputs = dict[str, np.ndarray]


def load_sentences(path: Path | None = None, key: str | None = None) -> list[str]:
    """Non-empty lines of a sentence file (default: the corpus shipped with the project), read lazily
    within the limits of pipeline/core/limits.py; errors name ``key``, the recipe key that names the file."""
    path = Path(path) if path is not None else DEFAULT_CORPUS
    where = f"{key}: {path}" if key else f"sentence file {path}"
    sentences: list[str] = []
    for line in text_lines(path, where):
        if line.strip():
            if len(sentences) == MAX_SENTENCES:
                raise RecipeError(f"{where}: more than {MAX_SENTENCES:,} sentences, the limit of a sentence file")
            sentences.append(line.strip())
    if not sentences:
        raise RecipeError(f"{where}: no sentences in it")
    return sentences


def tokenize(tokenizer: object, sentences: Sequence[str], input_names: Sequence[str],
             seq: int | None = None, max_length: int = MAX_SENTENCE_TOKENS) -> Inputs:
    """Tokenize a batch: padded to ``seq`` (truncating longer ones) or, when None, to the longest."""
    encoded = tokenizer(  # type: ignore[operator]
        list(sentences),
        padding="max_length" if seq else "longest",
        truncation=True,
        max_length=seq or max_length,
        return_tensors="np",
    )
    out = {}
    for name in input_names:
        if name in encoded:
            out[name] = np.ascontiguousarray(encoded[name], dtype=np.int64)
        elif name == "token_type_ids":
            out[name] = np.zeros_like(encoded["input_ids"], dtype=np.int64)
        else:
            raise RecipeError(f"inputs.names: the tokenizer gives no {name!r}")
    return out


def sentence_batches(tokenizer: object, sentences: Sequence[str], input_names: Sequence[str],
                     batch: int, count: int, seed: int = 0, seq: int | None = None) -> list[Inputs]:
    """``count`` batches of ``batch`` sentences drawn with ``seed``, each padded to its longest."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    batches = []
    for i in range(count):
        picked = [sentences[order[(i * batch + j) % len(order)]] for j in range(batch)]
        batches.append(tokenize(tokenizer, picked, input_names, seq=seq))
    return batches


def random_tokens(input_names: Sequence[str], batch: int, seq: int, vocab_size: int, seed: int = 0,
                  pad_fraction: float = 0.25) -> Inputs:
    """Seeded random token ids within the vocabulary; rows after the first end in padding.

    Ids avoid the lowest 1000 (special and unused tokens in WordPiece vocabularies) when the
    vocabulary is large enough. The first row is never padded, so the full length is exercised.
    """
    rng = np.random.default_rng(seed)
    low = 1000 if vocab_size > 2000 else 1
    ids = rng.integers(low, vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(1, batch):
        keep = max(1, int(seq * (1 - rng.uniform(0, pad_fraction * 2))))
        mask[row, keep:] = 0
        ids[row, keep:] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: values[name] for name in input_names}


def resize_examples(examples: Inputs, batch: int) -> Inputs:
    """Example inputs of a factory model, repeated or cut along axis 0 to ``batch`` rows."""
    out = {}
    for name, value in examples.items():
        reps = -(-batch // value.shape[0])
        out[name] = np.ascontiguousarray(np.concatenate([value] * reps, axis=0)[:batch])
    return out
