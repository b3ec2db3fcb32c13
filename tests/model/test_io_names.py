"""A recipe's input and output names are checked against the model before anything runs (``--dry-run``
included), from its config alone: no weights are loaded. A factory model's outputs cannot be known so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

TINY_DISTILBERT = {"model_type": "distilbert", "architectures": ["DistilBertModel"], "vocab_size": 30522, "dim": 32,
                   "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 128}


def factory() -> tuple[object, dict[str, object]]:
    """A factory model whose single output the recipe may name as it likes."""
    import torch

    return torch.nn.Linear(4, 2), {"x": torch.zeros(2, 4)}


def write(tmp_path: Path, config: Path | None, task: str, inputs: dict, **model: str) -> Path:
    path = tmp_path / "r.yaml"
    source = model or {"source": str(config), "tokenizer": "packaged:all-MiniLM-L6-v2"}
    path.write_text(yaml.safe_dump({"model": source, "task": task, "inputs": inputs, "passes": ["onnx_export"],
                                    "verify": {"shapes": [[1, 9]]}}))
    return path


@pytest.fixture
def distilbert_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-distilbert.json"
    path.write_text(json.dumps(TINY_DISTILBERT))
    return path


@pytest.mark.parametrize(("model", "task", "outputs", "expected"), [
    ("bert", "feature-extraction", ["last_hiden_state"],
     "inputs.outputs: 'last_hiden_state' is not an output of BertModel; it gives last_hidden_state, pooler_output"),
    ("bert", "feature-extraction", ["last_hidden_state", "hidden_states"],
     "inputs.outputs: 'hidden_states' is not an output of BertModel; it gives last_hidden_state, pooler_output"),
    ("bert", "text-classification", ["last_hidden_state"],
     "inputs.outputs: 'last_hidden_state' is not an output of BertForSequenceClassification; it gives logits"),
    ("distilbert", "feature-extraction", ["pooler_output"],
     "inputs.outputs: 'pooler_output' is not an output of DistilBertModel; it gives last_hidden_state"),
], ids=["misspelt", "not-a-tensor", "classifier", "distilbert"])
def test_an_output_the_model_does_not_give_is_exit_2_at_dry_run(model: str, task: str, outputs: list[str],
                                                               expected: str, tmp_path: Path,
                                                               tiny_bert_config: Path, distilbert_config: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    config = tiny_bert_config if model == "bert" else distilbert_config
    recipe = write(tmp_path, config, task, {"names": ["input_ids", "attention_mask"], "outputs": outputs})
    assert main(["optimize", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {expected}"]
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(("names", "expected"), [
    (["input_ids", "atention_mask"],
     "inputs.names: 'atention_mask' is not a text model input (input_ids, attention_mask, token_type_ids)"),
    (["attention_mask", "input_ids"],
     "inputs.names: text inputs must be listed in the order input_ids, attention_mask"),
], ids=["misspelt", "out-of-order"])
def test_an_input_the_model_does_not_take_is_exit_2_at_dry_run(names: list[str], expected: str, tmp_path: Path,
                                                              tiny_bert_config: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = write(tmp_path, tiny_bert_config, "feature-extraction", {"names": names})
    assert main(["optimize", str(recipe), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {expected}"]


@pytest.mark.parametrize(("model", "task", "outputs"), [
    ("bert", "feature-extraction", ["last_hidden_state", "pooler_output"]),
    ("bert", "text-classification", ["logits"]),
    ("distilbert", "feature-extraction", ["last_hidden_state"]),
], ids=["bert", "classifier", "distilbert"])
def test_the_outputs_the_model_gives_pass_dry_run(model: str, task: str, outputs: list[str], tmp_path: Path,
                                                 tiny_bert_config: Path, distilbert_config: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tiny_bert_config if model == "bert" else distilbert_config
    # DistilBERT takes no token_type_ids but accepts (and ignores) them: the default names stay usable
    recipe = write(tmp_path, config, task, {"outputs": outputs})
    assert main(["optimize", str(recipe), "--dry-run"]) == 0


def test_a_factory_model_names_its_outputs_as_it_likes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inputs = {"names": ["x"], "outputs": ["anything"], "dynamic_axes": {"x": {0: "batch"}, "anything": {0: "batch"}}}
    recipe = write(tmp_path, None, "feature-extraction", inputs, factory=f"{__name__}:factory")
    assert main(["optimize", str(recipe), "--dry-run"]) == 0


def test_an_output_unknown_until_the_model_runs_is_bad_input_naming_it(tiny_handle, monkeypatch) -> None:
    """Where the meta device cannot tell (a model's code that needs values), the first call names it."""
    import torch

    from pipeline.core.errors import ModelError
    from pipeline.model.loading import HFWrapper

    monkeypatch.setattr(type(tiny_handle), "_meta_model", lambda self: None)
    tiny_handle.output_names = ["last_hiden_state"]
    tiny_handle.check_io()  # nothing to check against
    model = tiny_handle.load().module.model
    with pytest.raises(ModelError, match="^inputs.outputs: 'last_hiden_state' is not an output of BertModel; "
                                         "it gives last_hidden_state, pooler_output$"):
        HFWrapper(model, ["input_ids"], ["last_hiden_state"])(torch.zeros(1, 3, dtype=torch.long))


def test_an_input_a_model_without_kwargs_does_not_take_is_bad_input(tiny_handle, monkeypatch) -> None:
    """A text model whose forward neither names an input nor takes **kwargs would fail at its first call."""
    import torch

    from pipeline.core.errors import ModelError

    class OnlyIds(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"last_hidden_state": input_ids}

    monkeypatch.setattr(type(tiny_handle), "_meta_model",
                        lambda self: (OnlyIds(), {"last_hidden_state": torch.zeros(1, 2)}))
    with pytest.raises(ModelError, match="^inputs.names: 'attention_mask' is not an input of OnlyIds; "
                                         "it takes input_ids$"):
        tiny_handle.check_io()
    tiny_handle.input_names = ["input_ids"]
    tiny_handle.check_io()
