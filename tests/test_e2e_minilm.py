"""End to end on the packaged, trained all-MiniLM-L6-v2: the shipped recipe, every pass, twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.model.inputs import random_tokens
from pipeline.run.replay import RECORD
from pipeline.runtime.sessions import onnx_session

pytestmark = pytest.mark.slow
STEPS = ["01_torchscript", "02_onnx_export", "03_onnx_simplify", "04_ort_optimize", "05_fp16",
         "06_openvino_convert", "07_nncf_int8", "08_ov_weight_int8"]
ONNX_STEPS = STEPS[1:5]


def _optimize(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "optimize", "recipes/minilm.yaml", "--no-bench",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("minilm")
    return out, _optimize(out)


def test_every_step_writes_its_artifact_and_manifest(minilm_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = minilm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("[0-9]*")) == STEPS
    for step in STEPS:
        manifest = json.loads((out / step / "manifest.json").read_text())
        assert (out / step / manifest["file"]).is_file() and manifest["model"]["random_weights"] is False
    report = json.loads((out / "report.json").read_text())
    shipped = next(a for a in report["artifacts"] if a["name"] == report["shipped_step"])
    assert report["ok"] and shipped["parity"]["passed"] and report["bundle"] == "ship"
    verdicts = {a["step"]: a["parity"]["passed"] for a in report["artifacts"]}
    assert all(verdicts.values()), verdicts
    for artifact in report["artifacts"]:  # every step, int8 included, gives a row the same answer in any batch
        invariance = artifact["parity"]["batch_invariance"]["last_hidden_state"]["cos_min"]
        assert invariance >= 0.999, (artifact["step"], invariance)


def test_fp32_onnx_matches_eager_to_1e_5_on_every_case(minilm_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = minilm_run
    report = json.loads((out / "report.json").read_text())
    for artifact in report["artifacts"]:
        if artifact["format"] == "onnx" and artifact["precision"] == "fp32":
            cases = artifact["parity"]["cases"]["last_hidden_state"]
            assert {"sentences_0", "random_b1_s9", "random_b3_s77", "random_b4_s133"} <= set(cases)
            worst = max(case["max_abs"] for case in cases.values())
            assert worst < 2e-5, (artifact["step"], worst)


def test_onnx_artifacts_run_at_other_shapes(minilm_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = minilm_run
    reference = json.loads((out / "report.json").read_text())
    fp32 = {a["step"] for a in reference["artifacts"] if a["precision"] == "fp32"}
    inputs = random_tokens(["input_ids", "attention_mask", "token_type_ids"], 3, 77, 30522, seed=5)
    expected = None
    for step in ONNX_STEPS:
        session = onnx_session(out / step / "model.onnx")
        (hidden,) = session.run(["last_hidden_state"], inputs)
        assert hidden.shape == (3, 77, 384) and np.isfinite(hidden).all()
        if step in fp32:
            kept = inputs["attention_mask"].astype(bool)
            expected = hidden if expected is None else expected
            assert np.abs(hidden[kept] - expected[kept]).max() < 1e-4, step


def test_second_run_rebuilds_nothing(minilm_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    """Every step and the reference are reused; no file of a step is rewritten (how long that takes
    is the benchmark's business, not a test's)."""
    out, first = minilm_run
    assert first.returncode == 0
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("[0-9]*/*")}
    replay = _optimize(out)  # nothing changed: the last run's record answers
    assert replay.returncode == 0 and "nothing changed since the last run" in replay.stderr, replay.stderr[-3000:]
    (out / RECORD).unlink()  # without it, the whole run runs, and every cache answers
    proc = _optimize(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reference: reused" in proc.stderr and proc.stderr.count(" cached (") == len(STEPS), proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("[0-9]*/*")} == mtimes
    assert all(a["cached"] for a in json.loads((out / "report.json").read_text())["artifacts"])
