"""report.json: the machine-readable result of a run (the contract in DESIGN.md)."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

from pipeline.artifact import write_json_atomic
from pipeline.optimize import RunResult
from pipeline.versions import library_versions


def _finite(value: Any) -> Any:
    """JSON has no Infinity or NaN: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


ROW_KEYS = ("batch", "seq", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "cv", "unstable",
            "unstable_reasons", "p50_change_from_previous", "repeats", "throughput", "tokens_per_s", "peak_rss_mb",
            "peak_gpu_mb")


def _bench_fields(bench: dict[str, Any] | None) -> dict[str, Any]:
    """The bench rows (DESIGN.md's ROW, plus extras) and the best-batch and real-data results of one target."""
    if not bench:
        return {"bench": []}
    rows = [{key: row[key] for key in ROW_KEYS if key in row} for row in bench.get("rows", [])]
    out: dict[str, Any] = {"bench": rows, "best_batch": bench.get("best_batch"), "real_data": bench.get("real_data"),
                           "peak_rss_mb": bench.get("peak_rss_mb"), "peak_gpu_mb": bench.get("peak_gpu_mb")}
    if bench.get("error"):
        out["bench_error"] = bench["error"]
    return out


def build_report(result: RunResult, out_dir: Path) -> dict[str, Any]:
    """The report dict; paths relative to ``out_dir``."""
    prepared = result.prepared
    recipe = prepared.recipe
    rows = []
    for step in prepared.steps:
        art = result.artifacts[step.name]
        parity = result.parity.get(step.name)
        rows.append({
            "step": step.folder, "name": step.name, "pass": step.pass_cls.name, "format": art.format.value,
            "precision": art.precision, "path": art.path.relative_to(out_dir).as_posix() if art.path else None,
            "sha256": art.sha256, "parent": step.source if step.source != "eager" else None,
            "cached": result.cached.get(step.name, False), "stats": art.stats,
            "parity": parity.to_json() if parity else None, **_bench_fields(result.bench.get(step.name)),
            "accuracy": result.accuracy.get(step.name),
        })
    model = prepared.ctx.model.describe()
    return _finite({
        "recipe": recipe.name, "ok": result.shipped is not None, "device": recipe.device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model,
        "random_weights": model["random_weights"], "task": recipe.task,
        "eager": {**_bench_fields(result.bench.get("eager")), "accuracy": result.accuracy.get("eager")},
        "bench_environment": next((b["fingerprint"] for b in result.bench.values() if "fingerprint" in b), None),
        "artifacts": rows, "blame": result.blame,
        "shipped": next((r["path"] for r in rows if r["name"] == result.shipped), None),
        "shipped_step": result.shipped,
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "versions": library_versions()},
    })


def write_report(result: RunResult) -> Path:
    """Write report.json into the run's output folder and return its path."""
    out_dir = result.prepared.out_dir
    path = out_dir / "report.json"
    write_json_atomic(path, build_report(result, out_dir))
    return path
