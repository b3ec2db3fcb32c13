"""What a bundle says about serving it, and that it ships nothing twice (fast; the loading itself is in
test_sentence_bundle.py, slow): every model file once by default; ``requires`` and README.md state the runtime,
its versions and the onnxruntime contrib operators of a fused graph; a sentence-transformers model's head files
and a tokenizer that stops where the model does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from pipeline.core.artifact import Artifact, Format
from pipeline.core.errors import ModelError
from pipeline.model.loading import ModelHandle
from pipeline.model.sentence import SentenceHead, sentence_head
from pipeline.model.spec import ModelSpec
from pipeline.report.outcome import RunResult
from pipeline.run.optimize import run
from pipeline.run.prepare import prepare
from pipeline.ship.bundle import build_bundle, check_bundle
from pipeline.ship.requires import installed, requirements
from pipeline.ship.sentence import serving_head, write_sentence_files, write_tokenizer

TEXT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
LONG_TEXT = " ".join(["Every bundle states what it needs to run and serves like the model it came from."] * 30)


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> RunResult:
    """onnx_export then ort_optimize (onnxruntime's fused contrib operators) on the tiny BERT; ships the fused step."""
    folder = tmp_path_factory.mktemp("fused")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2",
                  "attn_implementation": "eager"},
        "task": "feature-extraction", "passes": ["onnx_export", {"ort_optimize": {"model_type": "bert"}}],
        "verify": {"shapes": [[1, 9], [3, 77]], "sentence_batches": 1}, "ship": {"step": "ort_optimize"},
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return run(prepare(recipe, out=folder / "out"), bench="skip")


def test_the_default_bundle_holds_each_file_once(fused_run: RunResult) -> None:
    bundle = build_bundle(fused_run)
    manifest = json.loads((bundle / "manifest.json").read_text())
    files: dict[str, str] = manifest["files"]
    assert len(set(files.values())) == len(files), files  # no two files with the same bytes
    model = fused_run.artifacts["ort_optimize"]
    assert [rel for rel, digest in files.items() if digest == model.sha256] == ["model.onnx"]
    assert not (bundle / "triton").exists() and manifest["triton"] is None
    assert check_bundle(bundle) == []


def test_a_fused_bundle_states_its_contrib_operators(fused_run: RunResult) -> None:
    bundle = build_bundle(fused_run)
    requires = json.loads((bundle / "manifest.json").read_text())["requires"]
    graph = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    fused = sorted({node.op_type for node in graph.graph.node if node.domain == "com.microsoft"})
    assert fused and requires["contrib_ops"] == fused, (fused, requires)
    ort_version = installed(("onnxruntime", "onnxruntime-gpu"))
    assert requires["runtime"] == "onnxruntime" and requires["onnxruntime_only"] is True
    assert requires["min_version"] == requires["verified_with"] == ort_version  # contrib ops: from the fusing release
    assert requires["execution_provider"] == "CPUExecutionProvider" and requires["custom_ops"] == []
    assert (requires["onnx_opset"], requires["onnx_ir_version"]) == (17, graph.ir_version)
    readme = (bundle / "README.md").read_text()
    assert all(op in readme for op in fused) and "onnxruntime only" in readme
    assert f"`onnxruntime` >= {ort_version}" in readme and "ORTModelForFeatureExtraction" in readme
    assert "sentence-transformers" not in readme  # the tiny BERT has no sentence head


def test_a_standard_graph_runs_from_the_onnxruntime_that_implements_its_opset(fused_run: RunResult) -> None:
    export = fused_run.artifacts["onnx_export"]
    assert export.path is not None
    requires = requirements(Format.ONNX, export.path, "cpu", None)
    assert (requires["contrib_ops"], requires["custom_ops"], requires["onnxruntime_only"]) == ([], [], False)
    assert (requires["onnx_opset"], requires["onnx_ir_version"], requires["min_version"]) == (17, 8, "1.12")


def _graph(path: Path, opset: int, ir_version: int, inner: tuple[str, str], custom: bool = False) -> Path:
    """x -> If(c) whose then-branch holds one node of ``inner`` (domain, op type); a custom op after it when
    ``custom``."""
    def branch(name: str, domain: str, op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_y"], domain=domain)], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1])])

    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch("then", *inner),
                              else_branch=branch("else", "", "Identity")),
             helper.make_node("Scale", ["y"], ["z"], domain="org.example") if custom
             else helper.make_node("Identity", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(
        "com.microsoft", 1), helper.make_opsetid("org.example", 1), helper.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def test_operators_in_subgraphs_and_custom_domains_count(tmp_path: Path) -> None:
    contrib = _graph(tmp_path / "m.onnx", 17, 8, ("com.microsoft", "Gelu"), custom=True)
    requires = requirements(Format.ONNX, contrib, "cpu", None)
    assert requires["contrib_ops"] == ["Gelu"] and requires["custom_ops"] == ["org.example::Scale"]
    assert requires["onnxruntime_only"] is True and requires["min_version"] == requires["verified_with"]
    requires = requirements(Format.ONNX, _graph(tmp_path / "n.onnx", 17, 8, ("com.microsoft", "Gelu")), "cpu", None)
    assert requires["contrib_ops"] == ["Gelu"] and requires["custom_ops"] == []
    # beyond onnxruntime's table (or an IR version it does not list): the verified release
    requires = requirements(Format.ONNX, _graph(tmp_path / "p.onnx", 23, 11, ("", "Relu")), "cpu", None)
    assert requires["min_version"] == requires["verified_with"] and requires["contrib_ops"] == []
    requires = requirements(Format.ONNX, _graph(tmp_path / "o.onnx", 19, 9, ("", "Relu")), "cpu", None)
    assert requires["min_version"] == "1.15"


# -- sentence-transformers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> ModelHandle:
    """The packaged all-MiniLM-L6-v2 (a sentence-transformers model: mean pooling, normalised, 256 tokens)."""
    return ModelHandle(ModelSpec(source="packaged:all-MiniLM-L6-v2"), "feature-extraction", TEXT_NAMES,
                       ["last_hidden_state"])


def test_the_head_files_and_a_tokenizer_that_stops_where_the_model_does(minilm: ModelHandle, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    head = minilm.sentence_head
    assert head is not None and head.max_seq_length == 256
    written = write_sentence_files(head, tmp_path)
    write_tokenizer(minilm, tmp_path, head.max_seq_length)
    assert written == ["1_Pooling/config.json", "config_sentence_transformers.json", "modules.json",
                       "sentence_bert_config.json"]
    for rel in written:  # as the source has them
        assert (tmp_path / rel).read_bytes() == (head.folder / rel).read_bytes(), rel
    again = sentence_head(tmp_path)
    assert again is not None and (again.pooling, again.normalize, again.max_seq_length) == ("mean", True, 256)

    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"] is None  # the source pads and cuts at 128
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 256 and "max_length" not in config
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer(LONG_TEXT, truncation=True)["input_ids"]) == 256
    assert len(tokenizer("Short.")["input_ids"]) == 4  # no padding to a fixed length
    assert tokenizer(["A bundle.", "Short."], padding=True)["input_ids"] == \
        minilm.tokenizer(["A bundle.", "Short."], padding=True)["input_ids"]
    assert minilm.tokenizer.backend_tokenizer.padding is not None  # the run's own tokenizer is left as loaded


def _artifact(fmt: Format) -> Artifact:
    return Artifact(step_folder="01_x", format=fmt, key="k", path=Path("x/model"))


@pytest.mark.parametrize(("fmt", "task", "outputs", "laid_out"), [
    (Format.ONNX, "feature-extraction", ["last_hidden_state"], True),
    (Format.OPENVINO, "feature-extraction", ["last_hidden_state"], True),
    (Format.TORCHSCRIPT, "feature-extraction", ["last_hidden_state"], False),  # no sentence-transformers backend
    (Format.ONNX, "feature-extraction", ["pooler_output"], False),  # not the token embeddings pooling reads
    (Format.ONNX, "text-classification", ["logits"], False),
])
def test_the_head_is_laid_out_where_sentence_transformers_loads_it(fmt: Format, task: str, outputs: list[str],
                                                                   laid_out: bool) -> None:
    handle = ModelHandle(ModelSpec(source="packaged:all-MiniLM-L6-v2"), task, TEXT_NAMES, outputs)
    assert (serving_head(handle, _artifact(fmt)) is not None) == laid_out


def _sentence_folder(folder: Path, modules: list[dict[str, Any]]) -> SentenceHead:
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "0_Transformer").mkdir()
    (folder / "0_Transformer" / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    head = sentence_head(folder)
    assert head is not None
    return head


def test_a_transformer_module_in_a_folder_of_its_own_moves_to_the_root(tmp_path: Path) -> None:
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    head = _sentence_folder(tmp_path / "source", modules)
    (tmp_path / "bundle").mkdir()
    assert write_sentence_files(head, tmp_path / "bundle") == ["1_Pooling/config.json", "modules.json",
                                                               "sentence_bert_config.json"]
    written = json.loads((tmp_path / "bundle" / "modules.json").read_text())
    assert [m["path"] for m in written] == ["", "1_Pooling"]  # the model, config and tokenizer are the bundle's
    assert json.loads((tmp_path / "bundle" / "sentence_bert_config.json").read_text()) == {"max_seq_length": 128}


def test_a_module_path_outside_the_model_is_refused(tmp_path: Path) -> None:
    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"},
               {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"path": "../elsewhere", "type": "sentence_transformers.models.Normalize"}]
    head = _sentence_folder(tmp_path / "source", modules)
    with pytest.raises(ModelError, match="must be a folder inside the model's"):
        write_sentence_files(head, tmp_path)


class _DenseModel:
    """A handle whose sentence-transformers files name a module this project does not reproduce."""

    task = "feature-extraction"
    output_names = ["last_hidden_state"]

    @property
    def sentence_head(self) -> SentenceHead:
        raise ModelError("modules.json: a sentence-transformers model with modules ['Transformer', 'Dense']")


def test_a_head_this_project_cannot_reproduce_ships_as_a_plain_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.ship import sentence

    said: list[str] = []
    monkeypatch.setattr(sentence.log, "warning", lambda message, *args: said.append(message % args))
    handle: Any = _DenseModel()
    assert serving_head(handle, _artifact(Format.ONNX)) is None
    assert sentence.sentence_summary(handle, None, _artifact(Format.ONNX)) is None
    assert len(said) == 1 and "leaves out the sentence-transformers head" in said[0] and "Dense" in said[0]
