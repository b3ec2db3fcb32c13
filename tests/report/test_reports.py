"""What a finished run writes for people and tools: report.json keeps the contract's fields (DESIGN.md),
results.csv one row per artifact, report.md says what ships first, and the plots are images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.cli import main

ROW_KEYS = {"batch", "seq", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "peak_rss_mb"}
QUICK = ["--set", "bench.batches=[1]", "--set", "bench.seqs=[8]", "--set", "bench.rounds=2",
         "--set", "bench.ship_point_rounds=2", "--set", "bench.min_seconds=0.05", "--set", "bench.min_repeats=3",
         "--set", "bench.warmup_seconds=0.01", "--set", "bench.best_batch=null", "--set", "bench.real_data=null",
         "--set", "bench.ship_point_generations=1",
         # other tests' load is no reason to measure a point again
         "--set", "bench.max_others_cpu=1", "--set", "bench.max_steal=1", "--set", "bench.max_baseline_spread=1000"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> Path:
    """The output folder of a benchmarked two-step tiny run."""
    import os

    import yaml

    work = tmp_path_factory.mktemp("reports")
    (work / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
        "task": "feature-extraction", "passes": ["onnx_export", {"fp16": {}}],
        "verify": {"shapes": [[1, 9]], "sentence_batches": 1}, "ship": {"fastest_at": [1, 8]}}))
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert main(["optimize", "tiny.yaml", *QUICK]) == 0
    finally:
        os.chdir(cwd)
    return work / "artifacts" / "tiny"


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


def test_report_md_says_what_ships_before_the_details(finished: Path) -> None:
    report = json.loads((finished / "report.json").read_text())
    text = (finished / "report.md").read_text()
    shipped_step = report["shipped"].split("/")[0]
    first_table = text[:text.index("\n\n", text.index("| artifact"))]
    assert "Shipped: **" in text[:text.index("| artifact")]  # said before the table
    assert f"**{shipped_step}** (shipped)" in first_table and "batch invariance" in first_table
    pngs = sorted((finished / "plots").glob("*.png"))
    assert pngs and all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in pngs)
