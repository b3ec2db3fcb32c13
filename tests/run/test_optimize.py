"""The whole run on a tiny random BERT: artifacts, manifests, cache reuse, exit codes, report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main

CHAIN = [{"torchscript": {"mode": "trace"}}, {"onnx_export": {"from": "eager"}}, "onnx_simplify"]


@pytest.fixture
def tiny_recipe(write_tiny_recipe: Callable[..., Path]) -> Path:
    return write_tiny_recipe("tiny", CHAIN, verify={"shapes": [[1, 9], [3, 77]], "sentence_batches": 2})


def _manifests(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("[0-9]*/manifest.json"))}


def test_run_writes_every_artifact_then_reuses_them(tiny_recipe: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(tiny_recipe), "--no-bench"]) == 0
    out = Path("artifacts/tiny")
    manifests = _manifests(out)
    assert list(manifests) == ["01_torchscript", "02_onnx_export", "03_onnx_simplify"]
    export = manifests["02_onnx_export"]
    assert export["parent"] == "eager" and export["pass"] == "onnx_export" and export["format"] == "onnx"
    assert manifests["03_onnx_simplify"]["parent_key"] == export["key"]
    assert {"torch", "transformers", "onnx", "onnxruntime", "onnxsim"} <= set(export["versions"])
    assert export["model"]["random_weights"] is True and export["stats"]["bytes"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["shipped"] == "03_onnx_simplify/model.onnx" and report["random_weights"]
    assert all(a["parity"]["passed"] for a in report["artifacts"])
    assert [a["parent"] for a in report["artifacts"]] == [None, None, "02_onnx_export"]
    assert (out / "reference" / "reference.npz").is_file()

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("[0-9]*/*")}
    (out / "report.md").unlink()  # a change the run record sees: the whole run runs, and the steps' cache answers
    assert main(["optimize", str(tiny_recipe), "--no-bench"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("[0-9]*/*")} == mtimes
    assert all(a["cached"] for a in json.loads((out / "report.json").read_text())["artifacts"])


def test_changing_one_config_reruns_that_step_and_later(tiny_recipe: Path) -> None:
    assert main(["optimize", str(tiny_recipe), "--no-bench"]) == 0
    before = {k: m["key"] for k, m in _manifests(Path("artifacts/tiny")).items()}
    assert main(["optimize", str(tiny_recipe), "--no-bench", "--set", "passes[1].onnx_export.opset=18"]) == 0
    after = {k: m["key"] for k, m in _manifests(Path("artifacts/tiny")).items()}
    assert after["01_torchscript"] == before["01_torchscript"]
    assert after["02_onnx_export"] != before["02_onnx_export"]
    assert after["03_onnx_simplify"] != before["03_onnx_simplify"]


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_recipe: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(tiny_recipe), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "01_torchscript" in printed and "will run" in printed
    assert not Path("artifacts").exists()


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_recipe: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(tiny_recipe), "--set", "passes[2].onnx_simplify.tolerence=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: passes[2].onnx_simplify.tolerence: unknown key; did you mean tolerance?"]
    assert main(["optimize", str(tiny_recipe), "--set", "verify.shapes=[[1,4000]]"]) == 2
    assert "exceeds the model's 128 positions" in capsys.readouterr().err
    assert not Path("artifacts").exists()


def test_tampered_artifact_is_rebuilt(tiny_recipe: Path) -> None:
    assert main(["optimize", str(tiny_recipe), "--no-bench"]) == 0
    model = Path("artifacts/tiny/03_onnx_simplify/model.onnx")
    model.write_bytes(model.read_bytes()[:100])
    assert main(["optimize", str(tiny_recipe), "--no-bench"]) == 0
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    assert [a["cached"] for a in report["artifacts"]] == [True, True, False]


def test_ship_check_on_the_command_line(tiny_recipe: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(tiny_recipe), "--no-bench"]) == 0
    bundle = Path("artifacts/tiny/ship")
    assert main(["ship", "--check", str(bundle)]) == 0
    assert "bundle intact" in capsys.readouterr().out
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    assert main(["ship", "--check", str(bundle)]) == 1
    assert "model.onnx" in capsys.readouterr().err
