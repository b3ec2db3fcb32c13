"""Greedy decoding with any artifact, eager ``generate`` as the reference, and how far the two agree.

A decoder artifact is one step: (tokens, attention mask, cache) -> (logits, grown cache). Greedy
decoding runs the prompt once with an empty cache (prefill), then one token at a time, feeding
back the cache the previous step returned. The tokens must equal those of transformers'
``generate`` on a freshly loaded eager model, with the same left-padded prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipeline.model.cache import CacheLayout
from pipeline.model.inputs import Inputs, tokenize

ModelFn = Callable[[Inputs], dict[str, np.ndarray]]


def next_inputs(inputs: Inputs, outputs: dict[str, np.ndarray], tokens: np.ndarray, layout: CacheLayout) -> Inputs:
    """The decode step after ``inputs``: one new token per row, the mask one longer, the returned cache."""
    mask = inputs["attention_mask"]
    grown = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=1)
    cache = {past: np.ascontiguousarray(outputs[present], dtype=np.float32)
             for past, present in zip(layout.past_names, layout.present_names, strict=True)}
    return {"input_ids": tokens[:, None].astype(np.int64), "attention_mask": grown, **cache}


def steps(fn: ModelFn, prompt: Inputs, layout: CacheLayout, new_tokens: int
          ) -> Iterator[tuple[Inputs, dict[str, np.ndarray], np.ndarray]]:
    """Greedy decoding: (inputs, outputs, chosen tokens) of the prefill and of each decode step."""
    batch = prompt["input_ids"].shape[0]
    inputs = {**prompt, **layout.empty(batch)}
    for step in range(new_tokens):
        outputs = fn(inputs)
        tokens = np.asarray(outputs["logits"])[:, -1].argmax(axis=-1)
        yield inputs, outputs, tokens
        if step + 1 < new_tokens:
            inputs = next_inputs(inputs, outputs, tokens, layout)


def greedy(fn: ModelFn, prompt: Inputs, layout: CacheLayout, new_tokens: int) -> np.ndarray:
    """Tokens chosen greedily, batch x new_tokens."""
    return np.stack([tokens for _, _, tokens in steps(fn, prompt, layout, new_tokens)], axis=1)


def end_ids(model: Any) -> set[int]:
    """The end-of-text token ids ``generate`` stops a sequence at (the model's generation config)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}


def visible_lengths(tokens: np.ndarray, ends: set[int]) -> np.ndarray:
    """Per row, how many generated tokens a user sees: up to and including the first end-of-text token."""
    lengths = np.full(tokens.shape[0], tokens.shape[1], dtype=np.int64)
    for row, values in enumerate(tokens):
        hits = np.flatnonzero(np.isin(values, list(ends))) if ends else np.empty(0, dtype=np.int64)
        if hits.size:
            lengths[row] = hits[0] + 1
    return lengths


def eager_generate(model: Any, prompt: Inputs, new_tokens: int, pad_id: int) -> dict[str, np.ndarray]:
    """Greedy ``generate`` as a user runs it (it stops a sequence at an end-of-text token): ``tokens``,
    batch x new_tokens (pad_id after a sequence ends), and ``visible``, each row's count of tokens a user
    sees."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id)
    ids = torch.from_numpy(prompt["input_ids"])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.from_numpy(prompt["attention_mask"]),
                             generation_config=config)
    tokens = out[:, ids.shape[1]:].numpy()
    if tokens.shape[1] < new_tokens:  # every sequence ended early
        tokens = np.pad(tokens, ((0, 0), (0, new_tokens - tokens.shape[1])), constant_values=pad_id)
    return {"tokens": tokens, "visible": visible_lengths(tokens, end_ids(model))}


def prompt_batches(tokenizer: Any, sentences: list[str], batch: int) -> list[Inputs]:
    """Sentences as left-padded prompt batches, in corpus order."""
    return [tokenize(tokenizer, sentences[i:i + batch], ["input_ids", "attention_mask"])
            for i in range(0, len(sentences), batch)]


def token_match(expected: list[np.ndarray], actual: list[np.ndarray], visible: list[np.ndarray] | None = None
                ) -> dict[str, Any]:
    """How many generated tokens equal eager's, counting each sequence up to its first difference (after a
    different token the two continue from different texts), and only the tokens a user sees (``visible``:
    per batch, each row's count; default all)."""
    total = matched = equal = rows = 0
    first: list[int] = []
    shown = visible if visible is not None else [np.full(len(want), want.shape[1]) for want in expected]
    for want, got, lengths in zip(expected, actual, shown, strict=True):
        for row_want, row_got, length in zip(want, got, lengths, strict=True):
            row_want, row_got = row_want[:int(length)], row_got[:int(length)]
            differ = np.flatnonzero(row_want != row_got)
            agree = int(differ[0]) if differ.size else row_want.size
            total, matched, rows = total + row_want.size, matched + agree, rows + 1
            equal += agree == row_want.size
            if differ.size:
                first.append(agree)
    return {"sequences": rows, "tokens": total, "matched": matched, "share": matched / total if total else 1.0,
            "sequences_equal": equal, "sequences_share": equal / rows if rows else 1.0,
            "first_differences": first[:20]}
