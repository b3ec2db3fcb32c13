"""What a finished run writes for people and tools: report.json keeps the contract's fields (DESIGN.md),
results.csv one row per artifact, report.md says what ships and why first, with the plot that marks the
shipped artifact among the candidates, every column and plot compares one point, and no plot has one value
along its axis."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.report import markdown as markdown_module
from pipeline.report.outcome import RunResult
from pipeline.report.plots import SHIP_PLOT, grid_layout, plot_names, ship_plot_points, write_plots
from pipeline.report.summary import ratio_notes, ship_candidates, speedup_cell, summary_point, summary_rows
from pipeline.verify.parity import Parity

ROW_KEYS = {"batch", "seq", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "peak_rss_mb"}
QUICK = ["--set", "bench.batches=[1]", "--set", "bench.seqs=[8]", "--set", "bench.rounds=2",
         "--set", "bench.ship_point_rounds=2", "--set", "bench.min_seconds=0.05", "--set", "bench.min_repeats=3",
         "--set", "bench.warmup_seconds=0.01", "--set", "bench.best_batch=null", "--set", "bench.real_data=null",
         "--set", "bench.ship_point_generations=1",
         # other tests' load is no reason to measure a point again
         "--set", "bench.max_others_cpu=1", "--set", "bench.max_steal=1", "--set", "bench.max_baseline_spread=1000"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> tuple[Path, RunResult]:
    """The output folder of a benchmarked two-step tiny run, and the RunResult its reports were written from."""
    import os

    import yaml

    import pipeline.run.optimize as optimize

    work = tmp_path_factory.mktemp("reports")
    (work / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction", "passes": ["onnx_export", {"fp16": {}}],
        "verify": {"shapes": [[1, 9]], "sentence_batches": 1}, "ship": {"fastest_at": [1, 8]}}))
    seen: list[RunResult] = []
    write = optimize.write_reports

    def keep(result: RunResult) -> Path:
        seen.append(result)
        return write(result)

    cwd = Path.cwd()
    os.chdir(work)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(optimize, "write_reports", keep)
            assert main(["optimize", "tiny.yaml", *QUICK]) == 0
    finally:
        os.chdir(cwd)
    return work / "artifacts" / "tiny", seen[-1]


@pytest.fixture(scope="module")
def finished(finished_run: tuple[Path, RunResult]) -> Path:
    return finished_run[0]


@pytest.fixture
def result(finished_run: tuple[Path, RunResult]) -> RunResult:
    """A copy of the tiny run's result, for a test to change."""
    return dataclasses.replace(finished_run[1], ratios=copy.deepcopy(finished_run[1].ratios),
                               unmeasured=copy.deepcopy(finished_run[1].unmeasured),
                               bench=copy.deepcopy(finished_run[1].bench), parity=dict(finished_run[1].parity))


def test_report_json_keeps_the_contract(finished: Path) -> None:
    report = json.loads((finished / "report.json").read_text())
    assert {"recipe", "ok", "device", "eager", "artifacts", "shipped", "ratios"} <= set(report)
    assert report["ok"] is True and report["recipe"] == "tiny" and report["device"] == "cpu"
    assert report["eager"]["bench"] and all(ROW_KEYS <= set(row) for row in report["eager"]["bench"])
    for artifact in report["artifacts"]:
        assert {"step", "pass", "format", "path", "sha256", "parent", "parity", "bench"} <= set(artifact)
        assert {"passed", "metrics", "tolerance", "batch_invariance"} <= set(artifact["parity"])
        assert (finished / artifact["path"]).is_file() and not Path(artifact["path"]).is_absolute()
    assert report["shipped"] in {artifact["path"] for artifact in report["artifacts"]}
    for ratio in report["ratios"]:
        assert {"target", "baseline", "batch", "seq", "ratio", "ci95", "rounds", "dropped"} <= set(ratio)
        assert ratio["baseline"] == "eager" and len(ratio["ci95"]) == 2


def test_results_csv_holds_one_row_per_artifact_and_point(finished: Path) -> None:
    with open(finished / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["artifact"] for row in rows} == {"eager", "01_onnx_export", "02_fp16"}
    assert all(row["batch"] == "1" and row["seq"] == "8" and float(row["p50_ms"]) > 0 for row in rows)
    assert all(float(row["batch_cos_min"]) > 0.999 for row in rows if row["artifact"] != "eager")


def test_report_md_starts_with_what_ships_and_why(finished: Path) -> None:
    report = json.loads((finished / "report.json").read_text())
    text = (finished / "report.md").read_text()
    shipped_step = report["shipped"].split("/")[0]
    point = (1, 8)
    entry = next(e for e in report["ratios"]
                 if e["target"] == report["shipped_step"] and (e["batch"], e["seq"]) == point)
    assert text.startswith("# tiny\n\n## What ships and why\n\n")
    section = text[:text.index("| artifact")]
    assert "\n## " not in section.split("## What ships and why", 1)[1]  # nothing comes between it and the table
    first = section.split("\n")[4]
    assert first.startswith(f"**{shipped_step}** ships: **{speedup_cell(entry)}** over eager PyTorch at batch 1, "
                            "sequence 8")
    assert "min cosine" in first and "max abs error" in first and "Why: " in section
    image = f"![what ships: speed-up over eager against parity](plots/{SHIP_PLOT}.png)"
    assert section.index(first) < section.index(image)
    assert (finished / "plots" / f"{SHIP_PLOT}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first_table = text[:text.index("\n\n", text.index("| artifact"))]
    assert f"**{shipped_step}** (shipped)" in first_table and "batch invariance" in first_table


def test_no_plot_is_written_for_an_axis_of_one_value(finished: Path, result: RunResult) -> None:
    """The tiny grid is one point (b1 s8): no latency or throughput plot, a column of dots; one run's plots
    are exactly those report.md links."""
    pngs = {path.stem for path in (finished / "plots").glob("*.png")}
    assert pngs == {SHIP_PLOT, "speedup", "parity_error", "memory"}
    assert grid_layout(result, "batch") is None and grid_layout(result, "seq") is None
    links = (finished / "report.md").read_text().rsplit("Plots: ", 1)[1]
    assert {name for name in pngs if f"plots/{name}.png" in links} == pngs


def _add_point(result: RunResult, point: tuple[int, int], speed: float = 1.0) -> None:
    """Every target also measured at ``point``, each row a copy of its first scaled by ``speed``."""
    for bench in result.bench.values():
        row = dict(bench["rows"][0], batch=point[0], seq=point[1])
        row["throughput"] *= speed
        bench["rows"].append(row)  # type: ignore[arg-type]


def test_the_default_grid_plots_latency_against_sequence_length(result: RunResult, tmp_path: Path) -> None:
    """Batch 1 at every sequence length (the default grid): latency against sequence length, not a column of
    dots against batch size; a full grid keeps latency against batch size. An earlier run's plot goes."""
    _add_point(result, (1, 16))
    assert grid_layout(result, "batch") == ("seq", "batch") and grid_layout(result, "seq") == ("seq", "batch")
    assert {"latency_vs_seq", "throughput_vs_seq"} <= set(plot_names(result))
    (tmp_path / "latency_vs_batch.png").write_bytes(b"an earlier run's plot")
    written = {path.stem for path in write_plots(result, tmp_path)}
    assert {path.stem for path in tmp_path.glob("*.png")} == written and "latency_vs_batch" not in written
    _add_point(result, (2, 8))
    _add_point(result, (2, 16))
    assert grid_layout(result, "batch") == ("batch", "seq") and grid_layout(result, "seq") == ("seq", "batch")


def test_the_throughput_column_compares_one_point(result: RunResult) -> None:
    """Measured at another point with more samples/s and a best batch, a target's summary throughput is still
    the one at the summary point, and the column says which point."""
    _add_point(result, (1, 16), speed=50.0)
    for bench in result.bench.values():
        bench["best_batch"] = {"batch": 64, "seq": 16, "throughput": 1e9}  # type: ignore[typeddict-item]
    point = summary_point(result)
    assert point == (1, 8)
    for row in summary_rows(result):
        at = next(r for r in result.bench[row["name"]]["rows"] if (r["batch"], r["seq"]) == point)
        assert row["throughput"] == at["throughput"]
    header = markdown_module.markdown(result).split("| artifact", 1)[1].split("\n", 1)[0]
    assert "samples/s (b1 s8)" in header and "best" not in header


def _failed(parity: Parity) -> Parity:
    return dataclasses.replace(parity, passed=False, failures=["min cosine 0.5 < 0.99"])


def test_the_what_ships_plot_marks_the_shipped_and_the_failed(result: RunResult) -> None:
    other = next(s.name for s in result.steps if s.name != result.shipped)
    result.parity[other] = _failed(result.parity[other])
    points = {p["name"]: p for p in ship_plot_points(result)}
    assert [name for name, p in points.items() if p["shipped"]] == [result.shipped]
    assert points[result.shipped]["kind"] == "shipped" and "(shipped)" in points[result.shipped]["label"]
    assert points[other]["kind"] == "failed" and "(FAIL)" in points[other]["label"]
    for name, p in points.items():
        entry = next(e for e in result.ratios if e["target"] == name and (e["batch"], e["seq"]) == (1, 8))
        low, high = entry["ci95"]
        assert p["lane"] == "measured" and p["y"] == entry["ratio"]
        assert p["yerr"] == pytest.approx((entry["ratio"] - low, high - entry["ratio"]))
        assert p["x"] > 0  # log scale: an exact zero sits at the floor


def test_a_ratio_not_measured_is_shown_as_not_measured_with_no_interval(result: RunResult) -> None:
    shipped = result.shipped
    entry: Any = next(e for e in result.ratios if e["target"] == shipped)
    result.ratios.remove(entry)
    why = "not measured: the baseline's rounds spread 4.0x between rounds, past 3x"
    result.unmeasured.append({**entry, "measured": False, "unstable": True, "reasons": [why]})
    point = next(p for p in ship_plot_points(result) if p["name"] == shipped)
    assert point["lane"] == "not measured" and point["y"] is None and point["yerr"] is None
    assert point["ci95"] is None and f"{entry['ratio']:.2f}x" not in point["label"]
    assert point["label"].endswith(": not measured, the baseline's rounds spread 4.0x between rounds, past 3x")
    candidate = next(c for c in ship_candidates(result) if c["name"] == shipped)
    assert candidate["ratio"] is None and candidate["ci95"] is None and candidate["why"] == why
    text = markdown_module.markdown(result)
    section = text[:text.index("| artifact")]
    assert "was not measured (the baseline's rounds spread 4.0x between rounds, past 3x)" in section
    assert f"{entry['ratio']:.2f}x" not in section
    row = next(line for line in text.split("\n") if line.startswith(f"| **{entry_folder(result, shipped)}**"))
    assert row.endswith("| not measured |")


def entry_folder(result: RunResult, name: str) -> str:
    return next(s.folder for s in result.steps if s.name == name)


def test_noise_notes_are_said_once_and_count_the_generations_that_count(result: RunResult) -> None:
    """A reason every target shares at a point is one line; the footer's generations are those of the rounds
    that count, with the plan's number (what the progress line said) where that is more."""
    shared = "3 of 5 rounds dropped (steal 9% past 5%)"
    for entry in result.ratios:
        entry["reasons"], entry["dropped"] = [shared], 3
    notes = ratio_notes(result)
    assert sum(shared in line for line in notes) == 1 and "? b1 s8, every target: " + shared in notes
    assert "generation" not in notes[0]  # the tiny recipe plans one generation
    bench = result.recipe.bench.model_copy(update={"ship_point_generations": 3})
    result.recipe = result.recipe.model_copy(update={"bench": bench})  # 2 rounds: 2 generations planned
    for entry in result.ratios:
        entry["generations"] = 2
    assert "b1 s8 over 2 generations of worker processes;" in ratio_notes(result)[0]
    for entry in result.ratios:
        entry["generations"] = 1
    assert "b1 s8 over 1 generation of worker processes (of 2 planned)" in ratio_notes(result)[0]


def test_a_point_not_measured_is_said_once_briefly_and_with_no_figure(result: RunResult) -> None:
    """Every round disturbed at a point: one line says so for every target, without the per-round details
    (the first note gives the worst disturbance) and without the unmeasured ratios' interval widths."""
    rounds = "other processes used 42% of the cores > 15%; other processes used 48% of the cores > 15%"
    for entry in result.ratios:
        entry.update(measured=False, unstable=True, reasons=[
            f"not measured: every round was disturbed ({rounds})",
            f"95% interval [8.11, 359.04] is wider than ±10% of {entry['ratio']:.2f}x over 5 rounds",
            f"every round was disturbed ({rounds}); none could be dropped"])
    result.unmeasured, result.ratios = result.ratios, []
    notes = ratio_notes(result)
    assert notes[1:] == ["? b1 s8, every target: not measured: every round was disturbed"]
    assert not any(f"{e['ratio']:.2f}x" in line for line in notes for e in result.unmeasured)
