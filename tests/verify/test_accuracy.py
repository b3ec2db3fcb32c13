"""Task accuracy on a labeled file: eager and every artifact, agreement, --limit, bad labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

TINY_CLASSIFIER = {
    "model_type": "distilbert", "architectures": ["DistilBertForSequenceClassification"], "vocab_size": 30522,
    "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 128,
    "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
}


@pytest.fixture
def classifier_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-classifier.json").write_text(json.dumps(TINY_CLASSIFIER))
    rows = [{"text": f"review number {i} was {'great' if i % 2 else 'awful'}", "label": "POSITIVE" if i % 2 else 0}
            for i in range(20)]
    (tmp_path / "labeled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"source": "tiny-classifier.json", "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "text-classification", "inputs": {"names": ["input_ids", "attention_mask"]},
        "passes": ["onnx_export"],
        "verify": {"shapes": [[2, 11]], "sentence_batches": 1, "accuracy": {"file": "labeled.jsonl", "batch": 8}},
    }))
    return path


def test_accuracy_of_eager_and_artifact_with_agreement(classifier_recipe: Path) -> None:
    assert main(["optimize", str(classifier_recipe), "--no-bench"]) == 0
    report = json.loads(Path("artifacts/cls/report.json").read_text())
    eager = report["eager"]["accuracy"]
    onnx = report["artifacts"][0]["accuracy"]
    assert eager["examples"] == 20 and 0.0 <= eager["accuracy"] <= 1.0
    assert onnx["accuracy"] == eager["accuracy"] and onnx["agreement"] == 1.0
    assert report["artifacts"][0]["parity"]["metrics"]["logits"]["top1_agreement"] == 1.0


def test_limit_uses_the_first_n_examples(classifier_recipe: Path) -> None:
    assert main(["optimize", str(classifier_recipe), "--no-bench", "--limit", "5"]) == 0
    report = json.loads(Path("artifacts/cls/report.json").read_text())
    assert report["eager"]["accuracy"]["examples"] == 5


def test_unknown_label_is_bad_input(classifier_recipe: Path, capsys: pytest.CaptureFixture) -> None:
    Path("labeled.jsonl").write_text(json.dumps({"text": "fine", "label": "MAYBE"}) + "\n")
    assert main(["optimize", str(classifier_recipe), "--no-bench"]) == 2
    assert "label 'MAYBE' is not one of the model's labels (NEGATIVE, POSITIVE)" in capsys.readouterr().err
    assert not Path("artifacts").exists()
