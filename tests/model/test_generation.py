"""Decoders with a key/value cache: the wrapper against transformers' own masking, the export at past and
sequence lengths other than the export's, and greedy generation against eager ``generate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from passes.export.onnx_export import OnnxExportConfig, OnnxExportPass
from pipeline.core.artifact import Artifact, Format
from pipeline.core.errors import ModelError
from pipeline.engine.context import make_context
from pipeline.engine.pass_api import IOSpec, PassContext
from pipeline.model.cache import comparable, with_cache
from pipeline.model.decoder import decoder_mask
from pipeline.model.inputs import load_sentences
from pipeline.model.loading import ModelHandle
from pipeline.model.spec import ModelSpec
from pipeline.recipe.load import DEFAULT_OUTPUTS
from pipeline.runtime.runner import run_onnx
from pipeline.verify.greedy import eager_generate, greedy, prompt_batches, token_match


def _handle(config: Path, names: list[str] | None = None) -> ModelHandle:
    spec = ModelSpec(source=str(config), tokenizer="packaged:all-MiniLM-L6-v2", attn_implementation="eager")
    return ModelHandle(spec, "text-generation", names or ["input_ids", "attention_mask"],
                       DEFAULT_OUTPUTS["text-generation"])


@pytest.fixture
def gpt2_ctx(tiny_gpt2_config: Path, tmp_path: Path) -> PassContext:
    handle = _handle(tiny_gpt2_config)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    _, axes = with_cache(handle, axes)
    io = IOSpec(handle.input_names, handle.output_names, axes, export_batch=2, export_seq=16)
    return make_context(handle, io, base_dir=tmp_path)


def _case(ctx: PassContext, batch: int, seq: int, past: int, seed: int) -> dict[str, np.ndarray]:
    """Random tokens after a random cache of ``past`` positions; row 1 left-padded by 3 tokens."""
    rng = np.random.default_rng(seed)
    layout = ctx.model.load().module.layout
    mask = np.ones((batch, past + seq), dtype=np.int64)
    if batch > 1:
        mask[1, :3] = 0
    return {"input_ids": rng.integers(1000, 30000, (batch, seq)), "attention_mask": mask,
            **layout.empty(batch, past, seed=seed)}


def _eager(ctx: PassContext, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    module = ctx.model.load().module
    with torch.no_grad():
        out = module(*[torch.from_numpy(inputs[name]) for name in ctx.io.input_names])
    return {name: value.numpy() for name, value in zip(ctx.io.output_names, out, strict=True)}


def test_the_wrapper_equals_transformers_own_masking_on_kept_positions(gpt2_ctx: PassContext) -> None:
    wrapper = gpt2_ctx.model.load().module
    ids = torch.randint(1000, 30000, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :7] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    empty = [torch.zeros(3, 4, 0, 8)] * 4
    with torch.no_grad():
        theirs = wrapper.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        ours = wrapper(ids, mask, *empty)[0]
    assert torch.equal(theirs[mask.bool()], ours[mask.bool()])


def test_the_mask_hides_padding_and_the_future_and_leaves_no_row_empty() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    additive, positions = decoder_mask(mask, 2, torch.float32)
    visible = additive[:, 0] == 0  # batch x 2 queries x 5 keys
    assert visible.shape == (2, 2, 5)
    assert visible[0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert visible[1].tolist() == [[False, False, True, True, False], [False, False, True, True, True]]
    assert positions.tolist() == [[3, 4], [1, 2]]
    only_padding = decoder_mask(torch.tensor([[0, 0, 1]]), 3, torch.float32)[0][0, 0] == 0
    assert bool(only_padding.any(dim=-1).all())  # a padded query still sees itself


def test_export_matches_fresh_eager_at_other_past_and_sequence_lengths(gpt2_ctx: PassContext,
                                                                       tmp_path: Path) -> None:
    # reference first, from a fresh model, at shapes none of which is the export's (batch 2, seq 16, past 9)
    shapes = [(1, 1, 20), (3, 7, 9), (2, 11, 0), (4, 1, 1), (3, 1, 40)]
    cases = [_case(gpt2_ctx, b, s, p, seed=i) for i, (b, s, p) in enumerate(shapes)]
    expected = [_eager(gpt2_ctx, case) for case in cases]
    eager = Artifact(step_folder="eager", format=Format.EAGER, key=gpt2_ctx.model.source_key)
    out = tmp_path / "onnx"
    out.mkdir()
    result = OnnxExportPass(OnnxExportConfig()).run(eager, gpt2_ctx, out)
    assert result.stats["check"][0]["shape"] == "2 x 16"
    for case, want in zip(cases, expected, strict=True):
        got = run_onnx(out / result.file, case)
        for name in gpt2_ctx.io.output_names:
            ref, kept = comparable(name, want[name], case["attention_mask"])
            actual, _ = comparable(name, got[name], case["attention_mask"])
            assert actual.shape == ref.shape
            diff = np.abs(actual - ref)[kept.astype(bool)].max()
            assert diff < 1e-5, (name, case["input_ids"].shape, diff)


def test_greedy_with_the_export_gives_eager_generates_tokens(gpt2_ctx: PassContext, tmp_path: Path) -> None:
    handle = gpt2_ctx.model
    prompts = prompt_batches(handle.tokenizer, load_sentences()[:12], 6)
    assert prompts[0]["attention_mask"][:, -1].all() and not prompts[0]["attention_mask"].all()  # left padding
    model = handle.load().module.model
    expected = [eager_generate(model, prompt, 6, handle.tokenizer.pad_token_id)["tokens"] for prompt in prompts]
    out = tmp_path / "onnx"
    out.mkdir()
    eager = Artifact(step_folder="eager", format=Format.EAGER, key=handle.source_key)
    path = out / OnnxExportPass(OnnxExportConfig()).run(eager, gpt2_ctx, out).file
    layout = handle.load().module.layout
    tokens = [greedy(lambda x: run_onnx(path, x), prompt, layout, 6) for prompt in prompts]
    match = token_match(expected, tokens)
    assert match["matched"] == match["tokens"] == 12 * 6 and match["sequences_equal"] == 12


def test_token_match_counts_each_sequence_up_to_its_first_difference() -> None:
    want = [np.array([[1, 2, 3, 4], [5, 6, 7, 8]])]
    got = [np.array([[1, 2, 9, 4], [5, 6, 7, 8]])]
    match = token_match(want, got)
    assert (match["matched"], match["tokens"], match["sequences_equal"]) == (6, 8, 1)
    assert match["first_differences"] == [2] and match["share"] == 0.75


def test_cache_tensors_are_compared_per_position_and_logits_on_current_tokens() -> None:
    mask = np.array([[0, 1, 1, 1]])
    present = np.zeros((1, 2, 4, 3))
    view, kept = comparable("present.0.key", present, mask)
    assert view.shape == (1, 4, 2, 3) and kept is mask
    logits, kept = comparable("logits", np.zeros((1, 1, 5)), mask)
    assert kept.tolist() == [[1]]


def test_a_decoder_takes_exactly_input_ids_and_attention_mask(tiny_gpt2_config: Path) -> None:
    handle = _handle(tiny_gpt2_config, ["input_ids", "attention_mask", "token_type_ids"])
    with pytest.raises(ModelError, match="text-generation takes input_ids, attention_mask"):
        with_cache(handle, {})


def test_prompts_and_new_tokens_must_fit_the_models_positions(tiny_gpt2_config: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).parents[2] / "recipes" / "gpt2_fp32.yaml"
    code = main(["optimize", str(recipe), "--set", f"model.source={tiny_gpt2_config}", "--set", "bench.seqs=[250]"])
    assert code == 2
    assert "a prompt of 250 tokens and 16 new ones exceed the model's 256 positions" in capsys.readouterr().err
