"""An unchanged re-run answers from the last run's record: nothing rebuilt, verified, measured or
written, torch not imported; any change runs the whole run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pipeline.run.optimize as run_optimize
from pipeline.cli import main

QUICK = ["--set", "bench.batches=[1]", "--set", "bench.seqs=[8]", "--set", "bench.rounds=2",
         "--set", "bench.ship_point_rounds=2", "--set", "bench.min_seconds=0.05", "--set", "bench.min_repeats=3",
         "--set", "bench.warmup_seconds=0.01", "--set", "bench.best_batch=null", "--set", "bench.real_data=null",
         "--set", "bench.ship_point_generations=1",
         # other tests' load is no reason to measure a point again
         "--set", "bench.max_others_cpu=1", "--set", "bench.max_steal=1", "--set", "bench.max_baseline_spread=1000"]


@pytest.fixture
def built(write_tiny_recipe: Callable[..., Path], capsys: pytest.CaptureFixture) -> tuple[Path, str]:
    """A tiny recipe run once (benchmarked), and what it printed."""
    recipe = write_tiny_recipe("tiny", [{"onnx_export": {}}], verify={"shapes": [[1, 9]], "sentence_batches": 1},
                               ship={"fastest_at": [1, 8]})
    assert main(["optimize", str(recipe), *QUICK]) == 0
    return recipe, capsys.readouterr().out


def count_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every call of the whole run (pipeline.run.optimize.run) and let it go on."""
    calls: list[Any] = []
    real = run_optimize.run

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_optimize, "run", spy)
    return calls


def test_an_unchanged_rerun_rebuilds_verifies_and_measures_nothing(
        built: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        tree_snapshot: Callable[[Path], dict[str, str]]) -> None:
    recipe, printed = built
    before = tree_snapshot(Path("artifacts/tiny"))
    calls = count_runs(monkeypatch)
    assert main(["optimize", str(recipe), *QUICK]) == 0
    assert calls == []  # no step built, no artifact verified, nothing benchmarked, no report or bundle written
    assert tree_snapshot(Path("artifacts/tiny")) == before
    again = capsys.readouterr()
    assert again.out == printed and "nothing changed since the last run" in again.err


@pytest.mark.parametrize("change", ["a report removed", "an artifact touched", "a recipe value", "the bench flag"])
def test_any_change_runs_the_whole_run_again(built: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
                                             change: str) -> None:
    recipe, _ = built
    out = Path("artifacts/tiny")
    extra: list[str] = []
    if change == "a report removed":
        (out / "report.md").unlink()
    elif change == "an artifact touched":
        model = out / "01_onnx_export" / "model.onnx"
        os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1_000_000))
    elif change == "a recipe value":
        extra = ["--set", "verify.tolerance.fp32.max_abs=0.01"]
    else:
        extra = ["--no-bench"]
    calls = count_runs(monkeypatch)
    assert main(["optimize", str(recipe), *QUICK, *extra]) == 0
    assert len(calls) == 1
    report = json.loads((out / "report.json").read_text())
    assert all(a["cached"] for a in report["artifacts"])  # the steps' own cache still reuses the artifact


def test_a_replay_in_a_fresh_process_never_imports_torch(built: tuple[Path, str]) -> None:
    recipe, _ = built
    probe = ("import sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
             "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "optimize", str(recipe), *QUICK], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("no torch"), done.stderr[-3000:]
    assert "nothing changed since the last run" in done.stderr


def test_a_link_loop_in_the_output_folder_does_not_trap_the_check(built: tuple[Path, str]) -> None:
    recipe, _ = built
    (Path("artifacts/tiny") / "loop").symlink_to(Path("artifacts/tiny").resolve())
    assert main(["optimize", str(recipe), *QUICK]) == 0  # the folder changed: a whole run, which ends
    assert main(["optimize", str(recipe), *QUICK]) == 0
