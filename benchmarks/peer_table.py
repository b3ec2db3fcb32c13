"""The peers table: one row per target (this project's artifacts and the tools users would pick
instead), speed-ups over eager, and how this project's shipped artifact compares with each.

Pure functions over plain results, so they are tested on fake ones (tests/test_peers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.bench.rounds import paired_interval
from pipeline.verify.metrics import worst as worst_of

Point = tuple[int, int]
GROUPS = ("this project", "PyTorch", "Optimum", "optimum-intel", "Olive", "onnxruntime", "NNCF")


@dataclass
class Target:
    """One thing benchmarked: how it was made, its parity against eager, and its worker result."""

    name: str
    group: str  # one of GROUPS
    kind: str  # eager, compile, or an artifact Format's value (torchscript, torch_export, onnx, openvino)
    precision: str = "fp32"
    how: str = ""
    path: str | None = None
    shipped: bool = False
    error: str | None = None  # why it could not be built, checked or benchmarked
    parity: dict[str, Any] | None = None  # {"passed", "metrics": {output: {...}}, "failures", "tolerance"}
    bench: dict[str, Any] | None = None  # the worker's result (rows, best_batch, fingerprint, ...)
    stats: dict[str, Any] = field(default_factory=dict)  # bytes, nodes, fused operators, build seconds


def worst(parity: dict[str, Any] | None, key: str, reducer: Any) -> float | None:
    """The worst value of one parity metric over every output of a report's parity entry (None when none)."""
    return worst_of((parity or {}).get("metrics") or {}, key, reducer)


def p50_at(bench: dict[str, Any] | None, point: Point) -> float | None:
    """p50 latency (ms) at one (batch, seq) point of a worker result."""
    for row in (bench or {}).get("rows", []):
        if (row["batch"], row["seq"]) == tuple(point):
            return float(row["p50_ms"])
    return None


def rounds_at(bench: dict[str, Any] | None, point: Point) -> list[float]:
    """The per-round median latencies (ms) at one point, in round order (empty when not measured)."""
    for row in (bench or {}).get("rows", []):
        if (row["batch"], row["seq"]) == tuple(point):
            return list(row.get("round_p50_ms") or [])
    return []


def paired(baseline: Target | None, target: Target | None, point: Point, tolerance: float) -> dict[str, Any] | None:
    """``baseline``'s latency over ``target``'s at ``point``, round by round of the same interleaved
    session: median and 95% interval (above 1: ``target`` is faster); None when either is missing."""
    if baseline is None or target is None:
        return None
    return paired_interval(rounds_at(baseline.bench, point), rounds_at(target.bench, point),
                           f"{baseline.name}/{target.name}/{point[0]}/{point[1]}", tolerance)


def best(bench: dict[str, Any] | None) -> tuple[int, int, float] | None:
    """(batch, seq, samples/s) with the highest measured throughput: the best-batch search or any grid point."""
    if not bench:
        return None
    found: list[tuple[float, int, int]] = [(r["throughput"], r["batch"], r["seq"]) for r in bench.get("rows", [])]
    search = bench.get("best_batch")
    if search:
        found.append((search["throughput"], search["batch"], search["seq"]))
    if not found:
        return None
    throughput, batch, seq = max(found)
    return batch, seq, float(throughput)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def verdict(target: Target) -> str:
    """pass or FAIL against the project's gate for the target's precision; '-' without a parity result."""
    if target.parity is None:
        return "-"
    return "pass" if target.parity.get("passed") else "FAIL"


def table_rows(targets: list[Target], point: Point, tolerance: float = 0.10) -> list[dict[str, Any]]:
    """One row per target: parity, p50 at ``point``, best throughput, speed-up over eager, and the
    shipped artifact against it (latency: target over shipped, round by round of the interleaved
    session, with a 95% interval; throughput: shipped / target; above 1 the shipped artifact is faster)."""
    by_name = {t.name: t for t in targets}
    eager = by_name.get("eager")
    shipped = next((t for t in targets if t.shipped), None)
    eager_best = best(eager.bench) if eager else None
    shipped_best = best(shipped.bench) if shipped else None
    rows = []
    for t in targets:
        p50, top = p50_at(t.bench, point), best(t.bench)
        throughput = top[2] if top else None
        over_eager, against_shipped = paired(eager, t, point, tolerance), paired(t, shipped, point, tolerance)
        rows.append({
            "name": t.name, "group": t.group, "kind": t.kind, "precision": t.precision, "shipped": t.shipped,
            "verdict": verdict(t), "max_abs": worst(t.parity, "max_abs", max),
            "cos_min": worst(t.parity, "cos_min", min), "p50_ms": p50,
            "best_batch": top[0] if top else None, "best_seq": top[1] if top else None,
            "best_throughput": throughput,
            "ms_per_call_at_best": 1000.0 * top[0] / top[2] if top and top[2] > 0 else None,
            "speedup_vs_eager": over_eager["ratio"] if over_eager else None,
            "speedup_vs_eager_ci95": over_eager["ci95"] if over_eager else None,
            "throughput_vs_eager": ratio(throughput, eager_best[2] if eager_best else None),
            "shipped_latency_ratio": against_shipped["ratio"] if against_shipped else None,
            "shipped_latency_ci95": against_shipped["ci95"] if against_shipped else None,
            "shipped_throughput_ratio": ratio(shipped_best[2] if shipped_best else None, throughput),
            "error": t.error or (t.bench or {}).get("error"),
            "others_cpu_share": t.stats.get("others_cpu_share"),
        })
    return rows
