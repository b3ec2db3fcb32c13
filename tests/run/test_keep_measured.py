"""A bundle chosen by measurement is never replaced by one chosen without it: ``optimize --no-bench``, a
run whose benchmark cannot be reused (as ``make peers`` runs the recipe), and ``verify`` leave ``ship/``
and the verdict in report.json as they were."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.run.optimize import run
from pipeline.run.prepare import prepare
from pipeline.run.shipped import SHIPPED, remember_measured_choice

QUICK = ["--set", "bench.batches=[1]", "--set", "bench.seqs=[8]", "--set", "bench.rounds=2",
         "--set", "bench.ship_point_rounds=2", "--set", "bench.min_seconds=0.05", "--set", "bench.min_repeats=3",
         "--set", "bench.warmup_seconds=0.01", "--set", "bench.best_batch=null", "--set", "bench.real_data=null",
         "--set", "bench.ship_point_generations=1",
         # other tests' load is no reason to measure a point again
         "--set", "bench.max_others_cpu=1", "--set", "bench.max_steal=1", "--set", "bench.max_baseline_spread=1000"]
OUT = Path("artifacts/tiny")
pytestmark = pytest.mark.slow  # each test benchmarks a tiny run first (about 15 s)


@pytest.fixture
def benched(write_tiny_recipe: Callable[..., Path]) -> Path:
    """Two steps that both pass, the ship point at b1 s8, one benchmarked run."""
    recipe = write_tiny_recipe("tiny", [{"onnx_export": {}}, {"torchscript": {"from": "eager"}}],
                               verify={"shapes": [[1, 9]], "sentence_batches": 1}, ship={"fastest_at": [1, 8]})
    assert main(["optimize", str(recipe), *QUICK]) == 0
    return recipe


def _verdict() -> tuple[bool, str]:
    report = json.loads((OUT / "report.json").read_text())
    return report["ok"], report["shipped_step"]


def test_no_bench_and_a_benchmark_that_cannot_be_reused_leave_the_measured_bundle(
        benched: Path, tree_snapshot: Callable[[Path], dict[str, str]]) -> None:
    ship, verdict = tree_snapshot(OUT / "ship"), _verdict()
    assert (OUT / SHIPPED).is_file()
    assert main(["optimize", str(benched), *QUICK, "--no-bench"]) == 0  # the cached session is used whole
    assert tree_snapshot(OUT / "ship") == ship and _verdict() == verdict
    other_protocol = [*QUICK, "--set", "bench.rounds=3"]  # the cached session no longer applies
    result = run(prepare(benched, other_protocol[1::2]), bench="reuse")  # what `make peers` runs
    assert result.ratios == [] and tree_snapshot(OUT / "ship") == ship and _verdict() == verdict
    assert main(["verify", str(benched), *QUICK]) == 0
    assert tree_snapshot(OUT / "ship") == ship and _verdict() == verdict


def test_the_step_chosen_by_measurement_stays_shipped_over_the_rule_s_fallback(
        benched: Path, capsys: pytest.CaptureFixture) -> None:
    prepared = prepare(benched, QUICK[1::2])
    onnx = next(item for item in prepared.planned if item.step.name == "onnx_export")
    remember_measured_choice(OUT, "onnx_export", onnx.key, (1, 8))  # as a run that measured it fastest does
    capsys.readouterr()
    assert main(["optimize", str(benched), *QUICK, "--set", "bench.rounds=3", "--no-bench"]) == 0
    err = capsys.readouterr().err
    assert _verdict() == (True, "onnx_export")  # the rule alone would ship the last passing step
    assert "onnx_export, chosen there by measurement before" in err and "rather than torchscript" in err
    assert json.loads((OUT / "ship" / "manifest.json").read_text())["name"] == "onnx_export"


def test_a_changed_artifact_is_not_kept(benched: Path) -> None:
    remember_measured_choice(OUT, "onnx_export", "another key", (1, 8))  # an earlier artifact's choice
    assert main(["optimize", str(benched), *QUICK, "--set", "bench.rounds=3", "--no-bench"]) == 0
    assert _verdict() == (True, "torchscript")


def test_an_edited_record_of_the_choice_is_ignored_with_a_warning(benched: Path, capsys: pytest.CaptureFixture) -> None:
    record = json.loads((OUT / SHIPPED).read_text())
    record["step"] = "onnx_export" if record["step"] == "torchscript" else "torchscript"
    (OUT / SHIPPED).write_text(json.dumps(record))  # the seal no longer checks
    capsys.readouterr()
    assert main(["optimize", str(benched), *QUICK, "--set", "bench.rounds=3", "--no-bench"]) == 0
    err = capsys.readouterr().err
    assert f"{SHIPPED}: not a record of the shipped step this tool sealed" in err
    assert _verdict() == (True, "torchscript")  # nothing kept: the rule's last passing step
