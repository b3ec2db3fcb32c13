"""plots/*.png, each readable without the table: titles, axis labels with units, legends."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib import ticker  # noqa: E402

from pipeline.bench.spec import BenchResult  # noqa: E402
from pipeline.core.store import write_bytes_atomic  # noqa: E402
from pipeline.report.outcome import RunResult  # noqa: E402
from pipeline.report.summary import machine, summary_point, summary_rows  # noqa: E402
from pipeline.verify.metrics import worst  # noqa: E402


def _targets(result: RunResult) -> list[tuple[str, BenchResult]]:
    return [(name, res) for name, res in result.bench.items() if res.get("rows")]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())


def _title(result: RunResult, what: str) -> str:
    env = machine(result) or {}
    where = f"{env.get('threads')} threads, {env.get('device')}" if env else ""
    return f"{result.recipe.name}: {what}" + (f" ({where})" if where else "")


def _log_axes(ax: Any, xs: list[int]) -> None:
    """Log scales with plain numbers: x ticks at the measured values, y in ordinary notation."""
    ax.set(xscale="log", yscale="log")
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def _panels(result: RunResult, path: Path, panel: tuple[str, str], x: tuple[str, str],
            lines: list[tuple[str, str, float]], ylabel: str, title: str) -> None:
    """One panel per value of ``panel`` (key, name), ``x`` (key, axis label) across, a line per target
    for each (row key, style, alpha) in ``lines`` in the target's colour."""
    rows_all: list[dict[str, Any]] = [{**r, "target": name} for name, res in _targets(result) for r in res["rows"]]
    values, xs = sorted({r[panel[0]] for r in rows_all}), sorted({r[x[0]] for r in rows_all})
    fig, axes = plt.subplots(1, len(values), figsize=(5 * len(values), 4.2), squeeze=False)
    for ax, value in zip(axes[0], values, strict=True):
        for i, (name, _) in enumerate(_targets(result)):
            rows = sorted((r for r in rows_all if r["target"] == name and r[panel[0]] == value),
                          key=lambda r: r[x[0]])
            for j, (key, style, alpha) in enumerate(lines):
                ax.plot([r[x[0]] for r in rows], [r[key] for r in rows], style, color=f"C{i % 10}", alpha=alpha,
                        label=name if j == 0 else None)
        ax.set(xlabel=x[1], ylabel=ylabel, title=f"{panel[1]} {value}")
        _log_axes(ax, xs)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(_title(result, title))
    _save(fig, path)


def latency_vs_batch(result: RunResult, path: Path) -> None:
    """p50 latency against batch size, one panel per sequence length, a line per target (p90 dashed)."""
    _panels(result, path, ("seq", "sequence length"), ("batch", "batch size"),
            [("p50_ms", "o-", 1.0), ("p90_ms", "--", 0.5)], "latency p50 (ms); dashed: p90",
            "latency against batch size")


def throughput_vs_seq(result: RunResult, path: Path) -> None:
    """Measured samples per second against sequence length, one panel per batch size."""
    _panels(result, path, ("batch", "batch size"), ("seq", "sequence length (tokens)"),
            [("throughput", "o-", 1.0)], "throughput (samples/s)", "measured throughput against sequence length")


def speedup(result: RunResult, path: Path) -> None:
    """Speed-up over eager per artifact: p50 at the point the summary quotes, and best throughput."""
    rows = [r for r in summary_rows(result) if r["speedup"] or r["best_throughput"]]
    eager = result.bench.get("eager", {})
    eager_best = max([r["throughput"] for r in eager.get("rows", [])]
                     + ([eager["best_batch"]["throughput"]] if eager.get("best_batch") else []), default=None)
    point = summary_point(result)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.8))
    ys = range(len(rows))
    latency = [r["speedup"] or 0 for r in rows]
    spans = [r["speedup_ci95"] or [r["speedup"] or 0] * 2 for r in rows]
    errors = [[max(0.0, v - lo) for v, (lo, _) in zip(latency, spans, strict=True)],
              [max(0.0, hi - v) for v, (_, hi) in zip(latency, spans, strict=True)]]
    best = [(r["best_throughput"] / eager_best) if eager_best and r["best_throughput"] else 0 for r in rows]
    ax.barh([y + 0.2 for y in ys], latency, height=0.4, xerr=errors, capsize=3,
            label=(f"latency at batch {point[0]}, seq {point[1]}: median of interleaved rounds, 95% interval"
                   if point else "latency, interleaved rounds, 95% interval"))
    ax.barh([y - 0.2 for y in ys], best, height=0.4, label="best throughput (any batch)")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(ys), [f"{r['step']} ({r['verdict']})" for r in rows])
    ax.set(xlabel="speed-up over eager PyTorch (x, higher is better)", title=_title(result, "speed-up over eager"))
    ax.legend(fontsize=8)
    _save(fig, path)


def parity_error(result: RunResult, path: Path) -> None:
    """Worst max-abs error and 1 - min cosine per artifact against eager, log scale, with the verdict."""
    rows = []
    for step in result.steps:
        parity = result.parity.get(step.name)
        if parity and parity.metrics:
            rows.append((step.folder, "pass" if parity.passed else "FAIL", worst(parity.metrics, "max_abs", max),
                         max(1e-12, 1 - worst(parity.metrics, "cos_min", min))))
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.8))
    ys = range(len(rows))
    colors = ["tab:green" if v == "pass" else "tab:red" for _, v, _, _ in rows]
    ax.barh([y + 0.2 for y in ys], [max(1e-12, r[2]) for r in rows], height=0.4, color=colors, label="max abs error")
    ax.barh([y - 0.2 for y in ys], [r[3] for r in rows], height=0.4, color=colors, alpha=0.45,
            label="1 - min cosine")
    ax.set_xscale("log")
    ax.set_yticks(list(ys), [f"{name} ({v})" for name, v, _, _ in rows])
    ax.set(xlabel="error against eager PyTorch (log scale, lower is better; exact zeros drawn at 1e-12)",
           title=f"{result.recipe.name}: parity error per artifact (green pass, red fail)")
    ax.legend(fontsize=8)
    _save(fig, path)


def memory(result: RunResult, path: Path) -> None:
    """Peak resident memory of each target's benchmark process, and each artifact's file size."""
    names = [name for name, res in result.bench.items() if res.get("peak_rss_mb")]
    sizes = {r["name"]: (r["bytes"] or 0) / 2**20 for r in summary_rows(result)}
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.8))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [result.bench[n]["peak_rss_mb"] for n in names], height=0.4,
            label="peak RSS of the benchmark process (up to its largest batch)")
    ax.barh([y - 0.2 for y in ys], [sizes.get(n, 0) for n in names], height=0.4, label="artifact file size")
    ax.set_yticks(list(ys), names)
    ax.set(xlabel="memory (MB)", title=_title(result, "memory per target"))
    ax.legend(fontsize=8)
    _save(fig, path)


def write_plots(result: RunResult, folder: Path) -> list[Path]:
    """Write every plot the results allow; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    makers = [("parity_error", parity_error)]
    if _targets(result):
        makers += [("latency_vs_batch", latency_vs_batch), ("throughput_vs_seq", throughput_vs_seq),
                   ("speedup", speedup), ("memory", memory)]
    written = []
    for name, maker in makers:
        maker(result, folder / f"{name}.png")
        written.append(folder / f"{name}.png")
    return written
