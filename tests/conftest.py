"""Shared fixtures: a tiny random-weight BERT with the packaged MiniLM tokenizer, and its context; a tiny
random-weight GPT-2 with the same tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# The project's folder first on the path: pytest puts tests/ there (for this file), where tests/passes, a folder
# without __init__.py, would otherwise be imported as the package `passes` whenever pytest is not started as
# `python -m pytest` from the project's folder (the `pytest` command, or another working directory).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import yaml  # noqa: E402

from passes.export.onnx_export import OnnxExportConfig, OnnxExportPass  # noqa: E402
from pipeline.core.artifact import Artifact, Format  # noqa: E402
from pipeline.engine.context import make_context  # noqa: E402
from pipeline.engine.pass_api import IOSpec, PassContext  # noqa: E402
from pipeline.model.cache import with_cache  # noqa: E402
from pipeline.model.loading import ModelHandle  # noqa: E402
from pipeline.model.spec import ModelSpec  # noqa: E402
from pipeline.recipe.load import DEFAULT_OUTPUTS  # noqa: E402

# records are sealed with a key of the test session's own, never the user's (children inherit it)
os.environ.setdefault("MODEL_PIPELINE_SEAL_KEY", os.path.join(tempfile.mkdtemp(prefix="seal-key-"), "seal.key"))

TINY_BERT = {
    "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128,
    "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
}
TEXT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# 2 layers, hidden 32; the vocabulary holds every id of the MiniLM tokenizer (30,522); no end-of-text id
TINY_GPT2 = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 30522, "n_embd": 32, "n_layer": 2,
    "n_head": 4, "n_positions": 256, "bos_token_id": 0, "eos_token_id": 0,
}
# a Llama-family decoder: grouped-query attention (4 query heads, 2 key/value heads), rotary positions, RMSNorm,
# SwiGLU; the vocabulary holds every id of the MiniLM tokenizer
TINY_LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 30522, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "bos_token_id": 0, "eos_token_id": 0,
}


@pytest.fixture(scope="session")
def tiny_llama_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny Llama architecture config (random weights, seeded)."""
    path = tmp_path_factory.mktemp("configs") / "tiny-llama.json"
    path.write_text(json.dumps(TINY_LLAMA))
    return path


@pytest.fixture(scope="module")
def llama_ctx(tiny_llama_config: Path, tmp_path_factory: pytest.TempPathFactory) -> PassContext:
    """The tiny Llama as a decoder (its key/value cache among the inputs and outputs), exported at batch 2
    and 16 positions."""
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


@pytest.fixture(scope="session")
def tiny_bert_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny BERT architecture config (random weights, seeded)."""
    path = tmp_path_factory.mktemp("configs") / "tiny-bert.json"
    path.write_text(json.dumps(TINY_BERT))
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny GPT-2 architecture config (random weights, seeded)."""
    path = tmp_path_factory.mktemp("configs") / "tiny-gpt2.json"
    path.write_text(json.dumps(TINY_GPT2))
    return path


@pytest.fixture
def write_tiny_recipe(tmp_path: Path, tiny_bert_config: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> Callable[..., Path]:
    """Writes ``<name>.yaml``, a tiny-BERT recipe with the given passes and sections, in the working
    folder (tmp_path, made current); returns its path."""
    monkeypatch.chdir(tmp_path)

    def write(name: str, passes: list, **sections: object) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
            "task": "feature-extraction", "passes": passes, **sections,
        }))
        return path

    return write


@pytest.fixture
def tiny_handle(tiny_bert_config: Path) -> ModelHandle:
    """Handle of the tiny BERT (feature extraction, last_hidden_state)."""
    spec = ModelSpec(source=str(tiny_bert_config), tokenizer="packaged:all-MiniLM-L6-v2", seed=0)
    return ModelHandle(spec, "feature-extraction", TEXT_NAMES, ["last_hidden_state"])


@pytest.fixture
def tiny_io() -> IOSpec:
    """IO spec with dynamic batch and sequence axes, exported at batch 2, sequence 16."""
    axes = {name: {0: "batch", 1: "sequence"} for name in TEXT_NAMES}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    return IOSpec(input_names=TEXT_NAMES, output_names=["last_hidden_state"], dynamic_axes=axes,
                  export_batch=2, export_seq=16)


@pytest.fixture
def tiny_ctx(tiny_handle: ModelHandle, tiny_io: IOSpec, tmp_path: Path) -> PassContext:
    """PassContext for the tiny BERT."""
    return make_context(tiny_handle, tiny_io, base_dir=tmp_path)


@pytest.fixture
def eager_artifact(tiny_handle: ModelHandle) -> Artifact:
    """The eager source artifact of the tiny BERT."""
    return Artifact(step_folder="eager", format=Format.EAGER, key=tiny_handle.source_key)


@pytest.fixture
def tiny_onnx(tiny_ctx: PassContext, tmp_path: Path) -> Artifact:
    """The tiny BERT exported to fp32 ONNX with dynamic batch and sequence axes (opset 17)."""
    import torch

    io = tiny_ctx.io
    example = tiny_ctx.sample_inputs(io.export_batch, io.export_seq)
    path = tmp_path / "tiny_onnx" / "model.onnx"
    path.parent.mkdir()
    module = tiny_ctx.model.load().module
    torch.onnx.export(module, tuple(torch.from_numpy(example[n]) for n in io.input_names), str(path),
                      input_names=io.input_names, output_names=io.output_names, dynamic_axes=io.dynamic_axes,
                      opset_version=17, dynamo=False)
    return Artifact(step_folder="01_onnx_export", format=Format.ONNX, key="tiny-onnx", path=path, parent="eager",
                    produced_by="onnx_export", meta={"precision": "fp32"})


@pytest.fixture
def tiny_fused(tiny_onnx: Artifact, tiny_ctx: PassContext, tmp_path: Path) -> Artifact:
    """The tiny BERT's export after ort_optimize (fused contrib operators)."""
    from passes.graph.ort_optimize import OrtOptimizeConfig, OrtOptimizePass

    folder = tmp_path / "tiny_fused"
    folder.mkdir()
    optimized = OrtOptimizePass(OrtOptimizeConfig()).run(tiny_onnx, tiny_ctx, folder)
    return Artifact(step_folder="02_ort_optimize", format=Format.ONNX, key="fused", path=folder / optimized.file,
                    parent=tiny_onnx.step_folder, produced_by="ort_optimize", meta=optimized.meta)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (dot-named ones included, links not followed): a file's sha256, a
    link's target, 'folder', or the type of a special file (a FIFO is listed, never read)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            entries[rel] = f"link -> {os.readlink(path)}"
        elif stat.S_ISDIR(mode):
            entries[rel] = "folder"
        elif stat.S_ISREG(mode):
            entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            entries[rel] = f"special {stat.S_IFMT(mode):o}"
    return entries


@pytest.fixture
def tree_snapshot() -> Callable[[Path], dict[str, str]]:
    """A listing of a folder with hashes, to show that a command changed nothing in it."""
    return snapshot
