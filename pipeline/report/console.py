"""What a person sees on the terminal: the plan, the summary table, and why the gate failed."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.engine.manager import PlannedStep
from pipeline.report.outcome import RunResult
from pipeline.report.summary import (
    generation_matches,
    generation_table,
    machine,
    point_text,
    ratio_at,
    ratio_notes,
    ship_lines,
    size_text,
    speedup_cell,
    summary_point,
    summary_rows,
)

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160, record=True)


def recorded(clear: bool = False) -> str:
    """Everything printed since the last clear, as plain text (what an unchanged re-run prints again)."""
    return console.export_text(clear=clear)


def print_plan(recipe_name: str, out_dir: Path, planned: list[PlannedStep]) -> None:
    """The chain as it would run into ``out_dir``: each step, what it reads, and whether it is cached."""
    table = Table(title=f"plan for {recipe_name} -> {out_dir}")
    for column in ("step", "pass", "reads", "produces", "state", "key"):
        table.add_column(column)
    for item in planned:
        step = item.step
        table.add_row(step.folder, step.pass_cls.name, step.source, step.pass_cls.produces.value,
                      "cached" if item.cached else "will run", item.key[:12])
    console.print(table)


def print_summary(result: RunResult) -> None:
    """The summary table (artifact, format, precision, size, parity, error vs eager, and at one point for every
    target p50, measured throughput and speed-up), then what ships and why."""
    spec = result.model.spec
    weights = f" (RANDOM weights, seed {spec.seed})" if spec.weights == "random" else ""
    point = summary_point(result)
    at = f" {point_text(point)}" if point else ""
    table = Table(title=f"{result.recipe.name}: {len(result.steps)} steps{weights}")
    for column in ("artifact", "format", "precision", "size", "built", "parity", "max abs err", "min cosine",
                   "batch inv.", f"p50 ms{at}", f"samples/s{at}", f"vs eager{at} [95%]"):
        table.add_column(column, justify="left" if column in ("artifact", "format", "parity") else "right")
    for r in summary_rows(result):
        table.add_row(r["step"] + (" (shipped)" if r["shipped"] else ""), r["format"], r["precision"],
                      size_text(r["bytes"]), "cached" if r["cached"] else "built", r["verdict"],
                      _fmt(r["max_abs"], 2, "e"), _fmt(r["cos_min"], 6), _fmt(r["batch_cos_min"], 6),
                      _cell(r["p50_ms"], 2, r["point_measured"]),
                      _cell(r["throughput"], 1, r["point_measured"]), r["speedup_cell"])
    console.print(table)
    if result.shipped is not None:  # why nothing ships is said by print_gate_failure
        for line in ship_lines(result, lambda text: f"[bold]{text}[/]"):
            console.print(line)
    if result.accuracy:
        parts = [f"eager {result.accuracy['eager']['accuracy']:.3f}"] + [
            f"{name} {s['accuracy']:.3f} (agrees {s['agreement']:.3f})"
            for name, s in result.accuracy.items() if name != "eager"]
        console.print(f"accuracy on {result.accuracy['eager']['examples']} labeled examples: " + "; ".join(parts))
    print_generation(result)
    if result.blame and result.blame.get("max_abs_added", 0) > 0:
        b = result.blame
        console.print(f"most error added by step {b['step']} (over {b['parent']}): "
                      f"max abs {b['max_abs_added']:.2e} on {b['output']}")


def print_generation(result: RunResult) -> None:
    """Greedy tokens equal to eager's, and the generation benchmark (text-generation)."""
    for folder, g, ppl in generation_matches(result):
        said = (f"; perplexity {ppl['artifact']:.3f} against eager's {ppl['eager']:.3f} ({ppl['increase']:+.2%})"
                if ppl else "")
        console.print(f"{folder}: greedy generation {g['matched']}/{g['tokens']} tokens equal to eager "
                      f"generate's ({g['sequences_equal']}/{g['sequences']} sequences){said}")
    rows = generation_table(result)
    if not rows:
        return
    table = Table(title=f"{result.recipe.name}: greedy generation, {rows[0]['new_tokens']} new tokens")
    for column in ("target", "batch", "prompt tokens", "TTFT p50 ms", "TTFT p90 ms", "per-token p50 ms",
                   "per-token p90 ms", "tokens/s", "vs eager", "tokens equal"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for r in rows:
        table.add_row(r["target"], str(r["batch"]), str(r["prompt_tokens"]), _fmt(r["ttft_p50_ms"]),
                      _fmt(r["ttft_p90_ms"]), _fmt(r["token_p50_ms"]), _fmt(r["token_p90_ms"]),
                      _fmt(r["tokens_per_s"], 1), f"{r['speedup']:.2f}x" if r["speedup"] else "-", r["matched"])
    console.print(table)


def print_gate_failure(result: RunResult) -> None:
    """Why nothing shipped: every miss of every artifact the recipe may ship."""
    console.print("[bold red]parity gate failed: nothing shipped[/]")
    for step in result.steps:
        parity = result.parity.get(step.name)
        if parity is not None and not parity.passed:
            for line in parity.failures:
                console.print(f"  {step.folder}: {line}")


def _fmt(value: float | None, digits: int = 2, kind: str = "f") -> str:
    return "-" if value is None else f"{value:.{digits}{kind}}"


def _cell(value: float | None, digits: int, measured: bool | None) -> str:
    return "not measured" if measured is False else _fmt(value, digits)


def print_bench(result: RunResult) -> None:
    """Latency percentiles, spread and measured throughput of every target at every grid point."""
    bench = result.bench
    env = machine(result) or {}
    table = Table(title=f"{result.recipe.name}: latency (ms) and throughput, "
                        f"{env.get('threads')} threads on {env.get('cpu')}")
    for column in ("target", "batch", "seq", "p50", "p90", "p99", "cv", "samples/s", "tokens/s", "vs eager [95%]",
                   "peak RSS MB", ""):
        table.add_column(column, justify="left" if column in ("target", "") else "right")
    for target, res in bench.items():
        if res.get("error"):
            table.add_row(target, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", f"failed: {res['error']}")
            continue
        for row in res["rows"]:
            speedup = speedup_cell(ratio_at(result, target, (row["batch"], row["seq"])))
            table.add_row(target, str(row["batch"]), str(row["seq"]), _fmt(row["p50_ms"]), _fmt(row["p90_ms"]),
                          _fmt(row["p99_ms"]), _fmt(row["cv"]), f"{row['throughput']:.1f}",
                          f"{row['tokens_per_s']:.0f}", speedup, f"{row['peak_rss_mb']:.0f}",
                          "NOT MEASURED" if not row.get("measured", True) else
                          "UNSTABLE" if row.get("unstable") else "")
    console.print(table)
    for line in ratio_notes(result):
        console.print(line)
    if not any(res.get("best_batch") or res.get("real_data") for res in bench.values()):
        return
    extra = Table(title="best batch and real-data throughput (sentences/s, tokenize + run)")
    for column in ("target", "best batch", "at seq", "samples/s", "stopped by", "padded", "by length", "gain"):
        extra.add_column(column)
    for target, res in bench.items():
        best, real = res.get("best_batch") or {}, res.get("real_data") or {}
        extra.add_row(target, str(best.get("batch", "-")), str(best.get("seq", "-")), _fmt(best.get("throughput"), 1),
                      str(best.get("stopped_by", "-")), _fmt(real.get("padded_sentences_per_s"), 1),
                      _fmt(real.get("sorted_sentences_per_s"), 1), _fmt(real.get("speedup_sorted_over_padded")))
    console.print(extra)
