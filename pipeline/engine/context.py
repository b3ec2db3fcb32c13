"""Builds the PassContext: the model handle plus seeded input makers for export and calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.engine.pass_api import IOSpec, PassContext
from pipeline.model.cache import INPUTS, cache_layout
from pipeline.model.inputs import Inputs, load_sentences, random_tokens, resize_examples, sentence_batches
from pipeline.model.loading import ModelHandle


def make_context(handle: ModelHandle, io: IOSpec, base_dir: Path, corpus: Path | None = None,
                 seed: int = 0, device: str = "cpu") -> PassContext:
    """A PassContext whose sample inputs are real sentences from ``corpus`` padded to the asked shape.

    A decoder's inputs carry a cache of seeded values, about half as long as the sentence, so every
    check runs a decode step with a past as well as current tokens.
    """
    cached = cache_layout(handle.hf_config) if handle.task == "text-generation" else None
    text_names = list(INPUTS) if cached else io.input_names  # a decoder's cache inputs are added below

    def with_past(inputs: Inputs) -> Inputs:
        if cached is None:
            return inputs
        batch, seq = inputs["input_ids"].shape
        past = seq // 2 + 1
        mask = np.concatenate([np.ones((batch, past), dtype=np.int64), inputs["attention_mask"]], axis=1)
        return {**inputs, "attention_mask": mask, **cached.empty(batch, past, seed=seed)}

    def sample_inputs(batch: int, seq: int) -> Inputs:
        if handle.tokenizer is None:
            return resize_examples(handle.factory_examples, batch)
        if seq < 3:  # too short for a sentence between the tokenizer's two special tokens
            return with_past(random_tokens(text_names, batch, seq, len(handle.tokenizer), seed=seed))
        sentences = load_sentences(corpus)
        return with_past(sentence_batches(handle.tokenizer, sentences, text_names, batch, 1, seed=seed, seq=seq)[0])

    def calibration_inputs(path: Path, count: int, batch: int) -> list[Inputs]:
        if handle.tokenizer is None:
            return [resize_examples(handle.factory_examples, batch)]
        sentences = load_sentences(path)
        count = min(count, max(1, len(sentences) // batch))
        return [with_past(inputs) for inputs in
                sentence_batches(handle.tokenizer, sentences, text_names, batch, count, seed=seed)]

    return PassContext(model=handle, io=io, sample_inputs=sample_inputs, calibration_inputs=calibration_inputs,
                       base_dir=base_dir, device=device)
