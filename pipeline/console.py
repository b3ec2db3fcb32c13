"""What a person sees on the terminal: the plan, the summary table, and why the gate failed."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.optimize import Prepared, RunResult

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _size(num: int | None) -> str:
    if num is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1024 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024  # type: ignore[assignment]
    return str(num)


def print_plan(prepared: Prepared) -> None:
    """The chain as it would run: each step, what it reads, and whether it is cached."""
    table = Table(title=f"plan for {prepared.recipe.name} -> {prepared.out_dir}")
    for column in ("step", "pass", "reads", "produces", "state", "key"):
        table.add_column(column)
    for item in prepared.planned:
        step = item.step
        table.add_row(step.folder, step.pass_cls.name, step.source, step.pass_cls.produces.value,
                      "cached" if item.cached else "will run", item.key[:12])
    console.print(table)


def _worst(metrics: dict[str, dict[str, Any]], key: str, reducer: Any) -> Any:
    values = [m[key] for m in metrics.values() if key in m]
    return reducer(values) if values else None


def print_summary(result: RunResult) -> None:
    """One row per artifact: format, precision, size, cache state, parity verdict and error."""
    recipe = result.prepared.recipe
    spec = result.prepared.ctx.model.spec
    weights = f" (RANDOM weights, seed {spec.seed})" if spec.weights == "random" else ""
    table = Table(title=f"{recipe.name}: {len(result.prepared.steps)} steps{weights}")
    for column in ("step", "format", "precision", "size", "built", "parity", "max abs err", "min cosine"):
        table.add_column(column)
    for step in result.prepared.steps:
        art = result.artifacts[step.name]
        parity = result.parity.get(step.name)
        verdict = "-" if parity is None else ("pass" if parity.passed else ("exempt" if parity.exempt else "FAIL"))
        max_abs = _worst(parity.metrics, "max_abs", max) if parity else None
        cos_min = _worst(parity.metrics, "cos_min", min) if parity else None
        marker = " (shipped)" if step.name == result.shipped else ""
        table.add_row(step.folder + marker, art.format.value, art.precision, _size(art.stats.get("bytes")),
                      "cached" if result.cached.get(step.name) else "built", verdict,
                      "-" if max_abs is None else f"{max_abs:.2e}", "-" if cos_min is None else f"{cos_min:.6f}")
    console.print(table)
    if result.accuracy:
        parts = [f"eager {result.accuracy['eager']['accuracy']:.3f}"] + [
            f"{name} {s['accuracy']:.3f} (agrees {s['agreement']:.3f})"
            for name, s in result.accuracy.items() if name != "eager"]
        console.print(f"accuracy on {result.accuracy['eager']['examples']} labeled examples: " + "; ".join(parts))
    if result.blame and result.blame.get("max_abs_added", 0) > 0:
        b = result.blame
        console.print(f"most error added by step {b['step']} (over {b['parent']}): "
                      f"max abs {b['max_abs_added']:.2e} on {b['output']}")


def print_gate_failure(result: RunResult) -> None:
    """Why nothing shipped: every miss of every artifact the recipe may ship."""
    console.print("[bold red]parity gate failed: nothing shipped[/]")
    for step in result.prepared.steps:
        parity = result.parity.get(step.name)
        if parity is not None and not parity.passed:
            for line in parity.failures:
                console.print(f"  {step.folder}: {line}")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_bench(result: RunResult) -> None:
    """Latency percentiles, spread and measured throughput of every target at every grid point."""
    bench = result.bench
    eager = {(r["batch"], r["seq"]): r["p50_ms"] for r in bench.get("eager", {}).get("rows", [])}
    env = next((b["fingerprint"] for b in bench.values() if "fingerprint" in b), {})
    table = Table(title=f"{result.prepared.recipe.name}: latency (ms) and throughput, "
                        f"{env.get('threads')} threads on {env.get('cpu')}")
    for column in ("target", "batch", "seq", "p50", "p90", "p99", "cv", "samples/s", "tokens/s", "vs eager",
                   "peak RSS MB", ""):
        table.add_column(column, justify="left" if column in ("target", "") else "right")
    for target, res in bench.items():
        if res.get("error"):
            table.add_row(target, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", f"failed: {res['error']}")
            continue
        for row in res["rows"]:
            base = eager.get((row["batch"], row["seq"]))
            speedup = f"{base / row['p50_ms']:.2f}x" if base else "-"
            table.add_row(target, str(row["batch"]), str(row["seq"]), _fmt(row["p50_ms"]), _fmt(row["p90_ms"]),
                          _fmt(row["p99_ms"]), _fmt(row["cv"]), f"{row['throughput']:.1f}",
                          f"{row['tokens_per_s']:.0f}", speedup, f"{row['peak_rss_mb']:.0f}",
                          "UNSTABLE" if row.get("unstable") else "")
    console.print(table)
    extra = Table(title="best batch and real-data throughput (sentences/s, tokenize + run)")
    for column in ("target", "best batch", "at seq", "samples/s", "stopped by", "padded", "by length", "gain"):
        extra.add_column(column)
    for target, res in bench.items():
        best, real = res.get("best_batch") or {}, res.get("real_data") or {}
        extra.add_row(target, str(best.get("batch", "-")), str(best.get("seq", "-")), _fmt(best.get("throughput"), 1),
                      str(best.get("stopped_by", "-")), _fmt(real.get("padded_sentences_per_s"), 1),
                      _fmt(real.get("sorted_sentences_per_s"), 1), _fmt(real.get("speedup_sorted_over_padded")))
    console.print(extra)
