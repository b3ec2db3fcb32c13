"""A shipped ONNX bundle loads in Optimum (its own environment, transformers 4.57), and an OpenVINO bundle
in optimum-intel (``.venv-intel``), and both match eager.

Optimum's ORTModel classes read config.json and the tokenizer written by transformers 5.x, find
model.onnx, and must give eager's outputs on the run's reference cases. The check runs in a
subprocess with ``.venv-optimum/bin/python`` (``make optimum-env``); this environment never
imports Optimum.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.model.inputs import load_sentences, tokenize
from pipeline.run.optimize import run
from pipeline.run.prepare import prepare
from pipeline.ship.bundle import build_bundle

ROOT = Path(__file__).resolve().parents[2]
OPTIMUM_PYTHON = ROOT / ".venv-optimum" / "bin" / "python"
LOADER = Path(__file__).with_name("optimum_load.py")
TINY_DISTILBERT = {
    "model_type": "distilbert", "architectures": ["DistilBertForSequenceClassification"], "vocab_size": 30522,
    "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 128,
    "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
}
TASKS = {
    "feature-extraction": ["input_ids", "attention_mask", "token_type_ids"],
    "text-classification": ["input_ids", "attention_mask"],
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OPTIMUM_PYTHON.exists(),
                       reason=f"no Optimum environment at {OPTIMUM_PYTHON} (build it with `make optimum-env`)"),
]


def build(tmp_path: Path, task: str, tiny_bert_config: Path) -> tuple[Path, Path]:
    """Run a tiny recipe for ``task``, ship it, and save its cases for the loader; (bundle, npz)."""
    source = tiny_bert_config
    if task == "text-classification":
        source = tmp_path / "tiny-distilbert.json"
        source.write_text(json.dumps(TINY_DISTILBERT))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(source), "tokenizer": "packaged:all-MiniLM-L6-v2"}, "task": task,
        "inputs": {"names": TASKS[task]}, "passes": ["onnx_export", "onnx_simplify"],
        "verify": {"shapes": [[1, 9], [3, 77]], "sentence_batches": 2},
    }))
    result = run(prepare(recipe), bench="skip")
    bundle = build_bundle(result)
    npz = tmp_path / "cases.npz"
    with np.load(result.out_dir / "reference" / "reference.npz") as data:
        arrays = {key: data[key] for key in data.files}
    texts = load_sentences()[:6]
    text_ids = tokenize(result.model.tokenizer, texts, TASKS[task])
    np.savez(npz, texts=np.array(texts), **arrays, **{f"text/{k}": v for k, v in text_ids.items()})
    return bundle, npz


@pytest.mark.parametrize("task", list(TASKS))
def test_optimum_loads_the_bundle_and_matches_eager(task: str, tmp_path: Path, tiny_bert_config: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bundle, npz = build(tmp_path, task, tiny_bert_config)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run([str(OPTIMUM_PYTHON), str(LOADER), str(bundle), task, str(npz)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.startswith("ok: ORTModelFor") and "transformers 4." in proc.stdout, proc.stdout
    if task == "text-classification":
        assert "NEGATIVE" in proc.stdout


INTEL_PYTHON = ROOT / ".venv-intel" / "bin" / "python"
INTEL_LOADER = Path(__file__).with_name("intel_load.py")


@pytest.mark.skipif(not INTEL_PYTHON.exists(),
                    reason=f"no optimum-intel environment at {INTEL_PYTHON} (build it with `make intel-env`)")
def test_optimum_intel_loads_an_openvino_bundle_and_matches_eager(tmp_path: Path, tiny_bert_config: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction", "passes": ["onnx_export", "openvino_convert"],
        "verify": {"shapes": [[1, 9], [3, 77]], "sentence_batches": 2},
    }))
    result = run(prepare(recipe), bench="skip")
    bundle = build_bundle(result)
    npz = tmp_path / "cases.npz"
    with np.load(result.out_dir / "reference" / "reference.npz") as data:
        np.savez(npz, **{key: data[key] for key in data.files})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run([str(INTEL_PYTHON), str(INTEL_LOADER), str(bundle), str(npz)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("ok: OVModelForFeatureExtraction"), proc.stdout
