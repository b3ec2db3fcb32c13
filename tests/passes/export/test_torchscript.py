"""Tests of the torchscript pass: trace and script, checked in a fresh process and at other shapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from passes.export.torchscript import TorchScriptConfig, TorchScriptPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.context import make_context
from pipeline.engine.pass_api import IOSpec, PassContext, PassOutput
from pipeline.model.loading import ModelHandle
from pipeline.model.spec import ModelSpec
from pipeline.runtime.runner import run_module

NAMES = ["input_ids", "attention_mask"]
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")


class Scriptable(torch.nn.Module):
    """A tiny model that torch.jit.script can compile: embedding, masked mean mixing, projection."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        if bool(attention_mask.sum() > 0):
            hidden = hidden + hidden.mean(dim=1, keepdim=True)
        return (torch.tanh(self.proj(hidden)),)


class BakesBatch(Scriptable):
    """Turns the batch size into a Python number: a trace freezes it at the example's value."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        scale = float(input_ids.shape[0])
        return (self.proj(self.embed(input_ids)) * scale,)


def _examples() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 7, 9, 11, 13, 2], [4, 6, 8, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def scriptable_factory() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Factory for ModelSpec(factory=...): the scriptable model and example inputs."""
    return Scriptable(), _examples()


def baked_factory() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Factory for ModelSpec(factory=...): a model whose trace bakes in the batch size."""
    return BakesBatch(), _examples()


def _factory_ctx(fn: str, tmp_path: Path) -> PassContext:
    # This module is already imported (under whatever name pytest gave it), so the factory resolves.
    handle = ModelHandle(ModelSpec(factory=f"{__name__}:{fn}"), "feature-extraction", NAMES, ["hidden"])
    axes = {name: {0: "batch", 1: "sequence"} for name in [*NAMES, "hidden"]}
    io = IOSpec(input_names=NAMES, output_names=["hidden"], dynamic_axes=axes, export_batch=2, export_seq=6)
    return make_context(handle, io, base_dir=tmp_path)


def _run(ctx: PassContext, parent: Artifact, out: Path, **config: object) -> PassOutput:
    out.mkdir()
    return TorchScriptPass(TorchScriptConfig(**config)).run(parent, ctx, out)


def _eager(ctx: PassContext) -> Artifact:
    return Artifact(step_folder="eager", format=Format.EAGER, key=ctx.model.source_key)


def test_trace_matches_eager_in_a_fresh_process(tiny_ctx: PassContext, eager_artifact: Artifact,
                                                tmp_path: Path) -> None:
    result = _run(tiny_ctx, eager_artifact, tmp_path / "ts")
    assert result.file == "model.pt" and result.meta["precision"] == "fp32"
    assert result.stats["graph_nodes"] > 0
    assert result.stats["check"][1]["shape"] != result.stats["check"][0]["shape"]

    inputs = tiny_ctx.sample_inputs(3, 41)  # export shape was 2 x 16
    np.savez(tmp_path / "inputs.npz", **inputs)
    code = (
        "import sys, numpy as np, torch\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "x = np.load(sys.argv[2])\n"
        "out = m(*[torch.from_numpy(x[n]) for n in sys.argv[4].split(',')])\n"
        "np.save(sys.argv[3], out[0].detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ts" / "model.pt"), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "out.npy"), ",".join(tiny_ctx.io.input_names)], check=True, timeout=120)
    got = np.load(tmp_path / "out.npy")
    io = tiny_ctx.io
    want = run_module(tiny_ctx.model.load().module, inputs, io.input_names, io.output_names)["last_hidden_state"]
    assert got.shape == want.shape == (3, 41, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_freeze_gives_a_frozen_module(tiny_ctx: PassContext, eager_artifact: Artifact, tmp_path: Path) -> None:
    result = _run(tiny_ctx, eager_artifact, tmp_path / "ts", freeze=True)
    assert result.meta["frozen"] is True
    loaded = torch.jit.load(str(tmp_path / "ts" / result.file))
    assert not any(node.kind() == "prim::GetAttr" for node in loaded.graph.nodes())
    assert all(check["max_abs_diff"] <= 1e-4 for check in result.stats["check"])


def test_script_mode_on_a_scriptable_factory(tmp_path: Path) -> None:
    ctx = _factory_ctx("scriptable_factory", tmp_path)
    result = _run(ctx, _eager(ctx), tmp_path / "ts", mode="script")
    assert result.meta["mode"] == "script"
    loaded = torch.jit.load(str(tmp_path / "ts" / result.file))
    assert "prim::If" in str(loaded.graph)  # scripting kept the branch a trace would have frozen
    inputs = ctx.sample_inputs(5, 6)
    want = run_module(Scriptable().eval(), inputs, ctx.io.input_names, ctx.io.output_names)["hidden"]
    got = run_module(loaded, inputs, ctx.io.input_names, ctx.io.output_names)["hidden"]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_script_mode_on_bert_works_or_says_use_trace(tiny_ctx: PassContext, eager_artifact: Artifact,
                                                     tmp_path: Path) -> None:
    try:
        result = _run(tiny_ctx, eager_artifact, tmp_path / "ts", mode="script")
    except RuntimeError as exc:
        assert "scripting is not supported for this model" in str(exc)
        assert "use mode: trace" in str(exc)
    else:
        assert result.meta["mode"] == "script"


def test_a_trace_that_baked_in_a_shape_is_rejected(tmp_path: Path) -> None:
    ctx = _factory_ctx("baked_factory", tmp_path)
    with pytest.raises(ValueError, match=r"at shape 3 x 6.*differs"):
        _run(ctx, _eager(ctx), tmp_path / "ts")


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        TorchScriptConfig(mode="compile")
    with pytest.raises(ValidationError):
        TorchScriptConfig(optimize=True)
    assert TorchScriptConfig.model_validate({"from": "eager"}).from_ == "eager"
