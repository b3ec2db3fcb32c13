"""Generation benchmark of a decoder target, inside its benchmark worker: greedy generation timed
step by step at each (batch, prompt length) of the grid.

Prompts are real tokenizer output: corpus sentences tokenized and joined until each row holds
exactly the prompt length in tokens, so every count below is of tokens, never of words. One
generation is a prefill (the prompt with an empty cache) and then one call per new token, each
fed the cache the previous call returned. Every step ends with its outputs on the host and the
next token chosen (arg-max), so no queued device work hides in a number.

- time to first token (TTFT): the prefill call and the choice of the first token;
- per-token latency: each later step (a decode step and its arg-max), over every run;
- generated tokens/s: batch x new tokens over the whole generation's time (median run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench.spec import WorkerSpec
from pipeline.model.cache import CacheLayout
from pipeline.model.inputs import Inputs, load_sentences
from pipeline.runtime.timing import Protocol, run_until, summarize

Step = Any  # callable: inputs -> list of output arrays in the order of the output names


def prompt_rows(tokenizer: Any, sentences: list[str], batch: int, length: int) -> np.ndarray:
    """batch x length token ids: consecutive corpus sentences tokenized (no special tokens) and joined,
    each row starting at another sentence."""
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    rows = []
    for row in range(batch):
        ids: list[int] = []
        start = row * 7  # rows begin at different sentences
        while len(ids) < length:
            ids.extend(encoded[start % len(encoded)])
            start += 1
        rows.append(ids[:length])
    return np.asarray(rows, dtype=np.int64)


def generate_once(step: Step, output_names: list[str], prompt: np.ndarray, layout: CacheLayout,
                  new_tokens: int) -> list[float]:
    """Seconds of each step of one greedy generation: [prefill + first token, then one per new token]."""
    from pipeline.verify.greedy import next_inputs

    batch = prompt.shape[0]
    inputs: Inputs = {"input_ids": prompt, "attention_mask": np.ones_like(prompt), **layout.empty(batch)}
    times = []
    for index in range(new_tokens):
        start = time.perf_counter()
        outputs = dict(zip(output_names, step(inputs), strict=True))
        tokens = np.asarray(outputs["logits"][:, -1]).argmax(axis=-1)
        times.append(time.perf_counter() - start)
        if index + 1 < new_tokens:
            inputs = next_inputs(inputs, outputs, tokens, layout)
    return times


def measure_generation(step: Step, output_names: list[str], prompt: np.ndarray, layout: CacheLayout,
                       new_tokens: int, repeats: int, protocol: Protocol) -> dict[str, Any]:
    """Warm up (count and time), then generate until ``repeats`` and ``min_seconds`` are both reached
    (``max_seconds`` caps); TTFT and per-token percentiles, tokens/s and the spread of whole runs."""
    def once() -> list[float]:
        return generate_once(step, output_names, prompt, layout, new_tokens)

    run_until(once, protocol.warmup, protocol.warmup_seconds)
    runs = run_until(once, repeats, protocol.min_seconds, protocol.max_seconds)
    batch = prompt.shape[0]
    ttft = summarize([run[0] * 1e3 for run in runs], protocol.cv_threshold)
    per_token = summarize([t * 1e3 for run in runs for t in run[1:]], protocol.cv_threshold)
    whole = summarize([sum(run) * 1e3 for run in runs], protocol.cv_threshold)
    return {"batch": batch, "prompt_tokens": int(prompt.shape[1]), "new_tokens": new_tokens,
            "ttft_p50_ms": ttft["p50_ms"], "ttft_p90_ms": ttft["p90_ms"],
            "token_p50_ms": per_token["p50_ms"], "token_p90_ms": per_token["p90_ms"],
            "tokens_per_s": batch * new_tokens / (whole["p50_ms"] / 1e3), "generation_p50_ms": whole["p50_ms"],
            "cv": whole["cv"], "unstable": whole["unstable"], "runs": len(runs)}


def generation_rows(step: Step, spec: WorkerSpec, protocol: Protocol) -> list[dict[str, Any]]:
    """A generation row for each (batch, prompt length) of the grid."""
    from pipeline.model.cache import prepare_tokenizer
    from pipeline.model.loading import tokenizer_at

    cfg = spec["generation"]
    layout = CacheLayout(**spec["cache"])
    tokenizer = prepare_tokenizer(tokenizer_at(spec["tokenizer_dir"], spec.get("tokenizer_gguf")))
    sentences = load_sentences(Path(cfg["corpus"]))
    return [measure_generation(step, spec["output_names"], prompt_rows(tokenizer, sentences, batch, length), layout,
                               cfg["new_tokens"], cfg["repeats"], protocol)
            for batch, length in spec["grid"]]
