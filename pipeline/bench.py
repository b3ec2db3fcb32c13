"""Benchmarks of the eager model and every artifact, each in its own process, with fair settings.

Results are cached per target under ``bench/`` (keyed by the artifact, the protocol and the
machine), so an unchanged recipe re-uses them; ``python -m pipeline bench`` always re-measures and
flags every point whose p50 moved more than ``rerun_tolerance`` from the previous measurement.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.artifact import Artifact, canonical_json, read_json, sha256_text, write_json_atomic
from pipeline.fingerprint import fingerprint
from pipeline.generation import cache_layout
from pipeline.progress import stage
from pipeline.results import Prepared

log = logging.getLogger(__name__)
PROTOCOL_KEYS = ("warmup", "warmup_seconds", "min_repeats", "min_seconds", "max_seconds", "throughput_seconds",
                 "cv_threshold")


def available_memory_mb() -> float:
    """MemAvailable from /proc/meminfo, in MB."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 4096.0


def worker_spec(prepared: Prepared, target: str, artifact: Artifact) -> dict[str, Any]:
    """Everything a worker process needs to benchmark one target."""
    recipe, handle = prepared.recipe, prepared.ctx.model
    bench = recipe.bench
    spec: dict[str, Any] = {
        "target": target, "format": artifact.format.value, "path": str(artifact.path) if artifact.path else None,
        "model": recipe.model.model_dump(), "task": recipe.task, "base_dir": str(handle.base_dir),
        "input_names": handle.input_names, "output_names": handle.output_names, "device": recipe.device,
        "threads": bench.threads, "grid": [[b, s] for b in bench.batches for s in bench.seqs],
        "protocol": {key: getattr(bench, key) for key in PROTOCOL_KEYS},
    }
    if handle.tokenizer is not None:
        spec["vocab_size"] = len(handle.tokenizer)
        spec["tokenizer_dir"] = str(handle.tokenizer.name_or_path)
    else:
        spec["examples"] = {k: {"data": v.tolist(), "dtype": str(v.dtype)} for k, v in handle.factory_examples.items()}
        # the factory must import in the worker as it did here
        spec["sys_path"] = [p for p in sys.path if p and Path(p).is_dir()]
    if bench.best_batch is not None:
        spec["best_batch"] = bench.best_batch.model_dump()
        spec["best_batch"]["memory_limit_mb"] = bench.best_batch.memory_limit_mb or 0.6 * available_memory_mb()
    if recipe.task == "text-generation":
        spec.update(generation_spec(recipe, handle))
    elif bench.real_data is not None and handle.tokenizer is not None:
        corpus = recipe.inputs.corpus_path
        spec["real_data"] = {**bench.real_data.model_dump(), "corpus": str(handle.base_dir / corpus)}
    return spec


def generation_spec(recipe: Any, handle: Any) -> dict[str, Any]:
    """What a decoder's worker needs besides the grid: the cache layout, and the generation benchmark."""
    out: dict[str, Any] = {"cache": dataclasses.asdict(cache_layout(handle.hf_config))}
    if recipe.bench.generation is not None:
        corpus = recipe.inputs.corpus_path
        out["generation"] = {**recipe.bench.generation.model_dump(), "corpus": str(handle.base_dir / corpus)}
    return out


def bench_key(prepared: Prepared, artifact: Artifact) -> str:
    """Cache key of a target's benchmark: the artifact, the protocol and grid, and the machine."""
    machine = fingerprint(prepared.recipe.bench.threads, prepared.recipe.device)
    return sha256_text(canonical_json({"artifact": artifact.key, "bench": prepared.recipe.bench.model_dump(),
                                       "machine": machine, "device": prepared.recipe.device}))


def run_worker(spec: dict[str, Any], timeout: float, module: str = "pipeline.bench_worker",
               extra_env: Callable[[Path], dict[str, str]] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run one target's benchmark in a fresh process (``python -m module SPEC OUT``); returns its
    result or {'error': ...}. ``extra_env`` adds variables, given the run's scratch folder."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        env.update(extra_env(Path(tmp)) if extra_env else {})
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-m", module, str(spec_path), str(out_path)],
                                  capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired:
            return {"target": spec["target"], "error": f"timed out after {timeout:.0f} s", "rows": []}
        if proc.returncode != 0 or not out_path.is_file():
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            return {"target": spec["target"], "error": lines[-1] if lines else f"exit {proc.returncode}", "rows": []}
        return json.loads(out_path.read_text(encoding="utf-8"))


def flag_reruns(result: dict[str, Any], previous: dict[str, Any] | None, tolerance: float) -> None:
    """Mark points whose p50 moved more than ``tolerance`` from the previous measurement of the same
    target (same cache key: artifact, protocol, machine) as unstable; a changed artifact is no rerun."""
    if not previous or previous.get("key") != result.get("key"):
        return
    before = {(r["batch"], r["seq"]): r["p50_ms"] for r in previous.get("rows", [])}
    for row in result.get("rows", []):
        old = before.get((row["batch"], row["seq"]))
        if old:
            change = (row["p50_ms"] - old) / old
            row["p50_change_from_previous"] = change
            if abs(change) > tolerance:
                row["unstable"] = True
                row.setdefault("unstable_reasons", []).append(f"p50 moved {change:+.0%} from the previous run")
    for row in result.get("rows", []):
        if row.get("cv", 0) > result.get("cv_threshold", 1e9):
            row.setdefault("unstable_reasons", []).append(f"cv {row['cv']:.2f}")


def benchmark(prepared: Prepared, artifacts: dict[str, Artifact], force: bool = False,
              measure: bool = True) -> dict[str, dict[str, Any]]:
    """Benchmark results by target ('eager' and every step name): re-used from cache unless ``force``;
    without ``measure``, only cached results are returned."""
    folder = prepared.out_dir / "bench"
    targets = ["eager", *[step.name for step in prepared.steps]]
    results: dict[str, dict[str, Any]] = {}
    with stage("bench", len(targets)) as advance:
        for target in targets:
            advance(f"{target} (own process)")
            _bench_target(prepared, target, artifacts[target], folder, results, force, measure)
    return results


def _bench_target(prepared: Prepared, target: str, artifact: Artifact, folder: Path,
                  results: dict[str, dict[str, Any]], force: bool, measure: bool) -> None:
    """Reuse or measure one target; a measurement is compared with the one it replaces."""
    key = bench_key(prepared, artifact)
    path = folder / f"{target}.json"
    previous = read_json(path)
    if not force and previous is not None and previous.get("key") == key and not previous.get("error"):
        results[target] = previous
        return
    if not measure:
        return
    result = run_worker(worker_spec(prepared, target, artifact), prepared.recipe.bench.timeout_seconds)
    result["key"] = key
    result["cv_threshold"] = prepared.recipe.bench.cv_threshold
    flag_reruns(result, previous, prepared.recipe.bench.rerun_tolerance)
    if result.get("error"):
        log.warning("bench %s failed: %s", target, result["error"])
    write_json_atomic(path, result)
    results[target] = result
