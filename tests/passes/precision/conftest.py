"""The tiny random Llama as a decoder (its key/value cache among the inputs and outputs) and its fp32 ONNX
export, shared by the weight-quantization tests of this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.export.onnx_export import OnnxExportConfig, OnnxExportPass
from pipeline.core.artifact import Artifact, Format
from pipeline.engine.context import make_context
from pipeline.engine.pass_api import IOSpec, PassContext
from pipeline.model.cache import with_cache
from pipeline.model.loading import ModelHandle
from pipeline.model.spec import ModelSpec
from pipeline.recipe.load import DEFAULT_OUTPUTS


@pytest.fixture(scope="module")
def llama_ctx(tiny_llama_config: Path, tmp_path_factory: pytest.TempPathFactory) -> PassContext:
    """The tiny Llama as a decoder, exported at batch 2 and 16 positions."""
    spec = ModelSpec(source=str(tiny_llama_config), tokenizer="packaged:all-MiniLM-L6-v2",
                     attn_implementation="eager")
    handle = ModelHandle(spec, "text-generation", ["input_ids", "attention_mask"],
                         DEFAULT_OUTPUTS["text-generation"])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    _, axes = with_cache(handle, axes)
    io = IOSpec(handle.input_names, handle.output_names, axes, export_batch=2, export_seq=16)
    return make_context(handle, io, base_dir=tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama_onnx(llama_ctx: PassContext, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """The tiny Llama's fp32 ONNX export (torchscript, opset 17)."""
    out = tmp_path_factory.mktemp("llama_onnx")
    eager = Artifact(step_folder="eager", format=Format.EAGER, key=llama_ctx.model.source_key)
    exported = OnnxExportPass(OnnxExportConfig(exporter="torchscript", opset=17)).run(eager, llama_ctx, out)
    return Artifact(step_folder="01_onnx_export", format=Format.ONNX, key="llama", path=out / exported.file,
                    parent="eager", produced_by="onnx_export", meta={"precision": "fp32"})
