"""Builds the PassContext: the model handle plus seeded input makers for export and calibration."""

from __future__ import annotations

from pathlib import Path

from pipeline.inputs import Inputs, load_sentences, random_tokens, resize_examples, sentence_batches
from pipeline.model import ModelHandle
from pipeline.pass_base import IOSpec, PassContext


def make_context(handle: ModelHandle, io: IOSpec, base_dir: Path, corpus: Path | None = None,
                 seed: int = 0, device: str = "cpu") -> PassContext:
    """A PassContext whose sample inputs are real sentences from ``corpus`` padded to the asked shape."""

    def sample_inputs(batch: int, seq: int) -> Inputs:
        if handle.tokenizer is None:
            return resize_examples(handle.factory_examples, batch)
        if seq < 3:  # too short for a sentence between the tokenizer's two special tokens
            return random_tokens(io.input_names, batch, seq, len(handle.tokenizer), seed=seed)
        sentences = load_sentences(corpus)
        return sentence_batches(handle.tokenizer, sentences, io.input_names, batch, 1, seed=seed, seq=seq)[0]

    def calibration_inputs(path: Path, count: int, batch: int) -> list[Inputs]:
        if handle.tokenizer is None:
            return [resize_examples(handle.factory_examples, batch)]
        sentences = load_sentences(path)
        count = min(count, max(1, len(sentences) // batch))
        return sentence_batches(handle.tokenizer, sentences, io.input_names, batch, count, seed=seed)

    return PassContext(model=handle, io=io, sample_inputs=sample_inputs, calibration_inputs=calibration_inputs,
                       base_dir=base_dir, device=device)
