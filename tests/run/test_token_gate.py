"""The token gate end to end on a tiny random Llama: a careless int4 (large blocks, round to nearest, no
repair) fails with exit code 1 and says that token match missed; the repair brings it back by sending the
MatMuls back to 8 bits in order of their measured sensitivity, and the manifest says which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_LLAMA

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# weights drawn with a smaller spread than TINY_LLAMA's default: 8-bit weights (blocks of 32) keep 98% of its
# greedy tokens (751/768 measured), careless 4-bit ones 45%
MODEL = {**TINY_LLAMA, "initializer_range": 0.05}
# every MatMul at 8 bits in the careless config's blocks of 64 keeps 680/768 of the tokens (0.885), under the
# int4 preset's 0.9: the gate asks for 0.8, which careless int4 (346/768) misses by far
MIN_SHARE = 0.8


def _recipe(folder: Path, int4: dict[str, object]) -> Path:
    (folder / "tiny-llama.json").write_text(json.dumps(MODEL))
    recipe = {
        "model": {"source": "tiny-llama.json", "tokenizer": "packaged:all-MiniLM-L6-v2",
                  "attn_implementation": "eager"},
        "task": "text-generation",
        "inputs": {"names": ["input_ids", "attention_mask"], "outputs": ["logits"], "export_batch": 2,
                   "export_seq": 16},
        "passes": [{"onnx_export": {"exporter": "torchscript", "opset": 17}},
                   {"matmul_nbits": {"name": "int4_weights", "bits": 4, "block_size": 64, "symmetric": True,
                                     "algorithm": "rtn", **int4}}],
        "verify": {"shapes": [[1, 7], [3, 37]], "sentence_batches": 1, "sentence_batch_size": 4,
                   "generation": {"new_tokens": 16, "prompts": 48, "batch": 16, "decode_steps": 2},
                   "tolerance": {"int4": {"min_token_match": MIN_SHARE}}},
        "bench": {"enabled": False},
        "ship": {"step": "int4_weights"},
    }
    path = folder / "tiny_int4.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _optimize(recipe: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", "optimize", str(recipe), "--out", str(out)],
                          cwd=recipe.parent, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_a_careless_int4_fails_on_token_match_and_the_repair_brings_it_back(tmp_path: Path) -> None:
    careless = _optimize(_recipe(tmp_path, {"repair": False}), tmp_path / "careless")
    assert careless.returncode == 1, careless.stderr[-2000:]
    said = careless.stdout + careless.stderr
    assert "token match" in said and "int4_weights" in said
    report = json.loads((tmp_path / "careless" / "report.json").read_text())
    verdict = report["artifacts"][1]["parity"]
    assert not verdict["passed"] and verdict["generation"]["share"] < MIN_SHARE
    assert not (tmp_path / "careless" / "ship").exists()

    # the bound on how much the repair may take out of 4 bits is raised: on two layers, 7 of 15 MatMuls back at
    # 8 bits kept 66% of the tokens; every MatMul at 8 bits keeps 98%
    repaired = _optimize(_recipe(tmp_path, {"repair": True, "repair_to": 8, "repair_max_fraction": 1.0}),
                         tmp_path / "repaired")
    assert repaired.returncode == 0, (repaired.stdout + repaired.stderr)[-3000:]
    report = json.loads((tmp_path / "repaired" / "report.json").read_text())
    row = report["artifacts"][1]
    assert row["parity"]["passed"] and row["parity"]["generation"]["share"] >= MIN_SHARE
    assert report["shipped_step"] == "int4_weights"
    manifest = json.loads((tmp_path / "repaired" / "02_int4_weights" / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["repaired"]["to"] == 8 and stats["repaired"]["nodes"], "the repair kept no MatMul at 8 bits"
    assert 0 < stats["matmul_nbits_8bit"] <= stats["matmul_nbits"]  # sent back to 8 bits, none to float
    assert stats["matmul_nbits_8bit"] == len(stats["repaired"]["nodes"])
