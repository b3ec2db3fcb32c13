"""One row per artifact for people: what it is, whether it passed, how far from eager, how fast."""

from __future__ import annotations

from typing import Any

from pipeline.bench.spec import BenchResult, Ratio
from pipeline.report.outcome import RunResult
from pipeline.verify.metrics import worst


def size_text(num: float | None) -> str:
    """Bytes as B, KB, MB or GB."""
    if num is None:
        return "-"
    for unit in ("B", "KB", "MB"):
        if num < 1024:
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.2f} GB"


def machine(result: RunResult) -> dict[str, Any] | None:
    """The fingerprint of the machine the benchmark ran on (every target's worker reports the same one)."""
    return next((b["fingerprint"] for b in result.bench.values() if "fingerprint" in b), None)


def summary_point(result: RunResult) -> tuple[int, int] | None:
    """The (batch, seq) the summary quotes: the ship point, else batch 1 at the longest benched sequence."""
    bench = result.recipe.bench
    if result.recipe.ship.fastest_at is not None:
        return tuple(result.recipe.ship.fastest_at)  # type: ignore[return-value]
    return (min(bench.batches), max(bench.seqs)) if result.bench else None


def _p50(bench: BenchResult | None, point: tuple[int, int] | None) -> float | None:
    for row in (bench or {}).get("rows", []):
        if point and (row["batch"], row["seq"]) == point:
            return row["p50_ms"]
    return None


def ratio_at(result: RunResult, name: str, point: tuple[int, int] | None) -> Ratio | None:
    """The interleaved ratio of ``name`` over eager at ``point``, or the entry that says it could not be
    measured there; None when the benchmark did not reach it."""
    return next((e for e in [*result.ratios, *result.unmeasured]
                 if e["target"] == name and (e["batch"], e["seq"]) == point), None)


def speedup_cell(entry: Ratio | None) -> str:
    """'1.92x [1.85, 2.01]' for a table cell, with a '?' when the interval is flagged; 'not measured' for
    a point that could not carry a ratio; '-' when absent."""
    if entry is None:
        return "-"
    if not entry.get("measured", True):
        return "not measured"
    low, high = entry["ci95"]
    return f"{entry['ratio']:.2f}x [{low:.2f}, {high:.2f}]" + ("?" if entry.get("unstable") else "")


def ratio_notes(result: RunResult) -> list[str]:
    """How the ratios were measured and how many rounds noise cost, then per point what holds for every target
    there (rounds dropped, a point not measured), said once, and what holds for one target alone."""
    entries = [*result.ratios, *result.unmeasured]
    if not entries:
        return []
    by_point: dict[tuple[int, int], list[Ratio]] = {}
    for entry in entries:
        by_point.setdefault((entry["batch"], entry["seq"]), []).append(entry)
    dropped = sum(group[0]["dropped"] for group in by_point.values())
    steal = max(e["steal_max"] for e in entries)
    others = max(e["others_cpu_max"] for e in entries)
    spread = [f"b{b} s{s} over {group[0]['generations']} generations of worker processes (resampled by process, "
              f"then by round)" for (b, s), group in by_point.items() if group[0].get("generations", 1) > 1]
    lines = [f"vs eager: the median over interleaved rounds of eager's median latency over the target's in the "
             f"same round, with a 95% bootstrap interval{'; ' if spread else ''}{', '.join(spread)}; {dropped} "
             f"round(s) dropped for noise over {len(by_point)} points (steal up to {steal:.0%}, other processes up "
             f"to {others:.0%} of the cores)"]
    for (batch, seq), group in by_point.items():
        shared = [why for why in group[0].get("reasons", []) if all(why in e.get("reasons", []) for e in group)]
        if shared and len(group) > 1:
            lines.append(f"? b{batch} s{seq}, every target: {'; '.join(shared)}")
        else:
            shared = []
        lines += [f"? {e['target']} b{batch} s{seq}: {'; '.join(own)}" for e in group
                  if (own := [why for why in e.get("reasons", []) if why not in shared])]
    return lines


def best_throughput(bench: BenchResult | None) -> float | None:
    """Highest samples/s seen: the best-batch search or any grid point."""
    if not bench:
        return None
    values = [row["throughput"] for row in bench.get("rows", [])]
    if bench.get("best_batch"):
        values.append(bench["best_batch"]["throughput"])
    return max(values) if values else None


def verdict(result: RunResult, name: str) -> str:
    """pass, FAIL, exempt (failed but exempt from the gate), or '-'."""
    parity = result.parity.get(name)
    if parity is None:
        return "-"
    return "pass" if parity.passed else ("exempt" if parity.exempt else "FAIL")


def summary_rows(result: RunResult) -> list[dict[str, Any]]:
    """The summary table: artifact, format, precision, size, verdict, error, p50, throughput, and the
    interleaved speed-up over eager with its 95% interval."""
    point = summary_point(result)
    rows = []
    for step in result.steps:
        art = result.artifacts[step.name]
        parity = result.parity.get(step.name)
        metrics = parity.metrics if parity else {}
        p50 = _p50(result.bench.get(step.name), point)
        ratio = ratio_at(result, step.name, point)
        rows.append({
            "step": step.folder, "name": step.name, "format": art.format.value, "precision": art.precision,
            "bytes": art.stats.get("bytes"), "verdict": verdict(result, step.name),
            "max_abs": worst(metrics, "max_abs", max), "cos_min": worst(metrics, "cos_min", min),
            "batch_cos_min": worst(parity.batch_invariance, "cos_min", min) if parity else None,
            "p50_ms": p50, "best_throughput": best_throughput(result.bench.get(step.name)),
            "speedup": ratio["ratio"] if ratio else None, "speedup_ci95": ratio["ci95"] if ratio else None,
            "speedup_cell": speedup_cell(ratio),
            "shipped": step.name == result.shipped, "cached": result.cached.get(step.name, False),
        })
    return rows


def generation_matches(result: RunResult) -> list[tuple[str, dict[str, Any]]]:
    """(step folder, greedy tokens against eager's) of every step checked by generation."""
    matches = [(step.folder, result.parity[step.name].generation) for step in result.steps
               if step.name in result.parity]
    return [(folder, generation) for folder, generation in matches if generation]


def generation_table(result: RunResult) -> list[dict[str, Any]]:
    """One row per target and (batch, prompt length) of the generation benchmark, with its tokens/s over
    eager's and the share of greedy tokens equal to eager's (text-generation)."""
    eager = {(r["batch"], r["prompt_tokens"]): r["tokens_per_s"]
             for r in (result.bench.get("eager") or {}).get("generation") or []}
    rows = []
    for target, bench in result.bench.items():
        parity = result.parity.get(target)
        match = parity.generation if parity is not None and parity.generation else None
        for row in bench.get("generation") or []:
            base = eager.get((row["batch"], row["prompt_tokens"]))
            rows.append({**row, "target": target, "speedup": row["tokens_per_s"] / base if base else None,
                         "matched": f"{match['matched']}/{match['tokens']}" if match else
                         ("reference" if target == "eager" else "-")})
    return rows
