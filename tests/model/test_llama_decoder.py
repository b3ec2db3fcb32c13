"""A Llama-family decoder (grouped-query attention, rotary positions) with its key/value cache: the cache
layout takes the key/value heads, and the ONNX export matches a freshly loaded eager model at past lengths,
batch sizes and sequence lengths other than the export's, with left padding; greedy tokens equal eager
``generate``'s."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from passes.export.onnx_export import OnnxExportConfig, OnnxExportPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.pass_api import PassContext
from pipeline.model.cache import CacheLayout, cache_layout, comparable
from pipeline.model.inputs import load_sentences
from pipeline.runtime.runner import run_onnx
from pipeline.verify.greedy import eager_generate, greedy, prompt_batches, token_match


def test_the_cache_holds_the_key_value_heads_of_grouped_query_attention() -> None:
    config = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    assert cache_layout(config) == CacheLayout(layers=30, heads=3, head_dim=64)
    explicit = SimpleNamespace(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                               head_dim=64)  # a head size that is not hidden / heads
    assert cache_layout(explicit) == CacheLayout(layers=2, heads=2, head_dim=64)
    gpt2 = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=32)  # no key/value heads
    assert cache_layout(gpt2) == CacheLayout(layers=2, heads=4, head_dim=8)


def _case(layout: CacheLayout, batch: int, seq: int, past: int, seed: int) -> dict[str, np.ndarray]:
    """Random tokens after a random cache of ``past`` positions; the last row left-padded by 3 tokens."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, past + seq), dtype=np.int64)
    if batch > 1:
        mask[-1, :3] = 0
    return {"input_ids": rng.integers(1000, 30000, (batch, seq)), "attention_mask": mask,
            **layout.empty(batch, past, seed=seed)}


def test_export_matches_fresh_eager_at_unseen_past_lengths_batches_and_left_padding(llama_ctx: PassContext,
                                                                                    tmp_path: Path) -> None:
    module = llama_ctx.model.load().module
    layout = module.layout
    assert (layout.heads, layout.head_dim) == (2, 16)  # 2 key/value heads of the 4 query heads
    # reference first, from a fresh model, at shapes none of which is the export's (batch 2, seq 16)
    shapes = [(1, 1, 20), (3, 7, 9), (2, 11, 0), (4, 1, 1), (3, 1, 57)]
    cases = [_case(layout, b, s, p, seed=i) for i, (b, s, p) in enumerate(shapes)]
    with torch.no_grad():
        expected = [dict(zip(llama_ctx.io.output_names, [t.numpy() for t in module(
            *[torch.from_numpy(case[name]) for name in llama_ctx.io.input_names])], strict=True)) for case in cases]
    eager = Artifact(step_folder="eager", format=Format.EAGER, key=llama_ctx.model.source_key)
    out = tmp_path / "onnx"
    out.mkdir()
    result = OnnxExportPass(OnnxExportConfig()).run(eager, llama_ctx, out)
    for case, want in zip(cases, expected, strict=True):
        got = run_onnx(out / result.file, case)
        for name in llama_ctx.io.output_names:
            ref, kept = comparable(name, want[name], case["attention_mask"])
            actual, _ = comparable(name, got[name], case["attention_mask"])
            assert actual.shape == ref.shape, name
            diff = np.abs(actual - ref)[kept.astype(bool)].max()
            assert diff < 1e-4, (name, case["input_ids"].shape, diff)
    # greedy decoding with the export gives eager generate's tokens on left-padded corpus prompts
    prompts = prompt_batches(llama_ctx.model.tokenizer, load_sentences()[:10], 5)
    fresh = llama_ctx.model.load().module.model
    want_tokens = [eager_generate(fresh, prompt, 8, llama_ctx.model.tokenizer.pad_token_id) for prompt in prompts]
    tokens = [greedy(lambda x: run_onnx(out / result.file, x), prompt, layout, 8) for prompt in prompts]
    match = token_match([w["tokens"] for w in want_tokens], tokens, [w["visible"] for w in want_tokens])
    assert match["matched"] == match["tokens"] and match["sequences_equal"] == 10
