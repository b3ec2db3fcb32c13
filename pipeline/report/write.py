"""The run's results on disk: report.json (the contract in DESIGN.md), results.csv, report.md, plots."""

from __future__ import annotations

import csv
import io
import platform
import time
from pathlib import Path
from typing import Any

from pipeline.bench.spec import REPORT_ROW_KEYS, BenchResult
from pipeline.core.store import json_safe, write_json_atomic, write_text_atomic
from pipeline.core.versions import library_versions
from pipeline.report.markdown import markdown
from pipeline.report.outcome import RunResult
from pipeline.report.plots import write_plots
from pipeline.report.summary import machine, summary_rows


def _bench_fields(bench: BenchResult | None) -> dict[str, Any]:
    """The bench rows (DESIGN.md's ROW, plus extras) and the best-batch and real-data results of one target."""
    if not bench:
        return {"bench": []}
    rows = [{key: row[key] for key in REPORT_ROW_KEYS if key in row} for row in map(dict, bench.get("rows", []))]
    out: dict[str, Any] = {"bench": rows, "best_batch": bench.get("best_batch"), "real_data": bench.get("real_data"),
                           "peak_rss_mb": bench.get("peak_rss_mb"), "peak_gpu_mb": bench.get("peak_gpu_mb")}
    if bench.get("generation") is not None:
        out["generation"] = bench["generation"]
    if bench.get("error"):
        out["bench_error"] = bench["error"]
    return out


def build_report(result: RunResult, out_dir: Path) -> dict[str, Any]:
    """The report dict; paths relative to ``out_dir``."""
    recipe = result.recipe
    rows = []
    folders = {s.name: s.folder for s in result.steps}  # parent as the step value tools can join on
    for step in result.steps:
        art = result.artifacts[step.name]
        parity = result.parity.get(step.name)
        rows.append({
            "step": step.folder, "name": step.name, "pass": step.pass_cls.name, "format": art.format.value,
            "precision": art.precision, "path": art.path.relative_to(out_dir).as_posix() if art.path else None,
            "sha256": art.sha256, "parent": folders.get(step.source),
            "key": art.key, "cached": result.cached.get(step.name, False),
            "rebuilt": step.name in result.rebuilt, "stats": art.stats,
            "parity": parity.to_json() if parity else None, **_bench_fields(result.bench.get(step.name)),
            "accuracy": result.accuracy.get(step.name),
        })
    model = result.model.describe()
    return json_safe({
        "recipe": recipe.name, "ok": result.shipped is not None, "device": recipe.device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model,
        "random_weights": model["random_weights"], "task": recipe.task,
        "eager": {**_bench_fields(result.bench.get("eager")), "accuracy": result.accuracy.get("eager")},
        "bench_environment": machine(result),
        "artifacts": rows, "blame": result.blame,
        "shipped": next((r["path"] for r in rows if r["name"] == result.shipped), None),
        "shipped_step": result.shipped, "ship_note": result.ship_note, "ratios": result.ratios,
        "ratios_not_measured": result.unmeasured,
        "bundle": result.bundle.relative_to(out_dir).as_posix() if result.bundle else None,
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "versions": library_versions()},
    })


def csv_rows(result: RunResult) -> list[dict[str, Any]]:
    """results.csv: one row per artifact and benchmarked shape (one row without shape when not benched)."""
    rows = []
    summary = {row["name"]: row for row in summary_rows(result)}
    for name in ["eager", *[s.name for s in result.steps]]:
        info = summary.get(name, {"step": "eager", "format": "eager", "precision": "fp32", "bytes": None,
                                  "verdict": "reference", "max_abs": 0.0, "cos_min": 1.0})
        accuracy = (result.accuracy.get(name) or {}).get("accuracy")
        base = {"artifact": info["step"], "format": info["format"], "precision": info["precision"],
                "size_bytes": info["bytes"], "parity": info["verdict"], "max_abs": info["max_abs"],
                "cos_min": info["cos_min"], "batch_cos_min": info.get("batch_cos_min"), "accuracy": accuracy}
        points = (result.bench.get(name) or {}).get("rows", [])
        for point in points or [{}]:
            rows.append({**base, **{key: point.get(key) for key in CSV_BENCH_KEYS}})
    return rows


CSV_BENCH_KEYS = ("batch", "seq", "p50_ms", "p90_ms", "p99_ms", "cv", "unstable", "throughput", "tokens_per_s",
                  "peak_rss_mb")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as CSV atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["artifact"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_reports(result: RunResult) -> Path:
    """Write report.json, results.csv, report.md and plots/ into the run's folder; returns report.json."""
    out_dir = result.out_dir
    path = out_dir / "report.json"
    write_json_atomic(path, build_report(result, out_dir))
    write_csv(out_dir / "results.csv", csv_rows(result))
    write_text_atomic(out_dir / "report.md", markdown(result))
    write_plots(result, out_dir / "plots")
    return path
