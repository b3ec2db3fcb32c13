"""openvino_convert on a decoder's ONNX export (the tiny Llama): the IR takes the export's inputs by their names,
runs at batch sizes and past lengths other than the export's with left padding as eager does, and generates
eager ``generate``'s tokens greedily."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")

from passes.export.openvino_convert import OpenVinoConvertConfig, OpenVinoConvertPass  # noqa: E402
from pipeline.core.artifact import Artifact, Format  # noqa: E402
from pipeline.engine.pass_api import PassContext  # noqa: E402
from pipeline.engine.postconditions import check_openvino  # noqa: E402
from pipeline.model.cache import cache_layout, comparable  # noqa: E402
from pipeline.model.inputs import load_sentences  # noqa: E402
from pipeline.runtime.runner import Runner  # noqa: E402
from pipeline.verify.greedy import eager_generate, greedy, prompt_batches, token_match  # noqa: E402


@pytest.fixture(scope="module")
def llama_ir(llama_ctx: PassContext, llama_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """The tiny Llama's ONNX export (TorchScript exporter) converted to an IR."""
    ir_dir = tmp_path_factory.mktemp("llama-ir")
    result = OpenVinoConvertPass(OpenVinoConvertConfig()).run(llama_onnx, llama_ctx, ir_dir)
    return Artifact(step_folder="ir", format=Format.OPENVINO, key="ir", path=ir_dir / result.file, meta=result.meta)


def _case(ctx: PassContext, batch: int, seq: int, past: int, seed: int) -> dict[str, np.ndarray]:
    """Random tokens after a random cache of ``past`` positions; row 1 left-padded by 3 positions."""
    rng = np.random.default_rng(seed)
    layout = cache_layout(ctx.model.hf_config)
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


def test_the_ir_takes_the_exports_inputs_by_name(llama_ctx: PassContext, llama_ir: Artifact) -> None:
    import openvino as ov

    assert llama_ir.path is not None
    check_openvino(llama_ir.path, llama_ctx.io)
    model = ov.Core().read_model(str(llama_ir.path))
    assert [port.get_names() for port in model.inputs] == [{name} for name in llama_ctx.io.input_names]
    assert [port.get_any_name() for port in model.outputs] == llama_ctx.io.output_names


@pytest.mark.parametrize(("batch", "seq", "past"), [(1, 1, 20), (3, 7, 9), (2, 11, 0), (4, 1, 1), (3, 1, 40)])
def test_the_ir_matches_eager_at_other_batches_and_past_lengths(llama_ctx: PassContext, llama_ir: Artifact,
                                                               batch: int, seq: int, past: int) -> None:
    case = _case(llama_ctx, batch, seq, past, seed=batch * 100 + past)
    want = _eager(llama_ctx, case)
    got = Runner(llama_ctx.model).open(llama_ir)(case)
    for name in llama_ctx.io.output_names:
        ref, kept = comparable(name, want[name], case["attention_mask"])
        actual, _ = comparable(name, got[name], case["attention_mask"])
        assert actual.shape == ref.shape and kept is not None
        assert np.abs(actual - ref)[kept.astype(bool)].max() < 1e-4, name


def test_greedy_with_the_ir_gives_eager_generates_tokens(llama_ctx: PassContext, llama_ir: Artifact) -> None:
    handle = llama_ctx.model
    prompts = prompt_batches(handle.tokenizer, load_sentences()[:8], 4)
    assert not prompts[0]["attention_mask"].all()  # left padding
    model = handle.load().module.model
    expected = [eager_generate(model, prompt, 6, handle.tokenizer.pad_token_id)["tokens"] for prompt in prompts]
    run = Runner(handle).open(llama_ir)
    tokens = [greedy(run, prompt, cache_layout(handle.hf_config), 6) for prompt in prompts]
    match = token_match(expected, tokens)
    assert match["matched"] == match["tokens"] == 8 * 6
