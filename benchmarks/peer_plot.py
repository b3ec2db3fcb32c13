"""The peers plot: speed-up over eager against distance from eager (left), best throughput (right)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib import ticker  # noqa: E402

from benchmarks.peer_table import GROUPS, Point, Target, table_rows  # noqa: E402

MARKERS = dict(zip(GROUPS, ("o", "s", "^", "P", "X", "D", "v"), strict=True))
FLOOR = 1e-8  # 1 - cosine below this is drawn at it (fp32 graphs match eager to rounding)
GATES = (("fp32 gate", 1 - 0.99999), ("int8 gate", 1 - 0.99))


def _distance(cos_min: float | None) -> float | None:
    return None if cos_min is None else max(1.0 - cos_min, FLOOR)


def _scatter(ax: Any, rows: list[dict[str, Any]], colors: dict[str, Any], point: Point) -> None:
    for row in rows:
        x, y = _distance(row["cos_min"]), row["speedup_vs_eager"]
        if x is None or y is None:
            continue
        label = row["name"] + (" (shipped)" if row["shipped"] else "") + (" [fails gate]" if row["verdict"] == "FAIL"
                                                                          else "")
        ax.scatter([x], [y], s=90 if row["shipped"] else 50, marker=MARKERS.get(row["group"], "o"),
                   color=colors[row["name"]], edgecolors="black" if row["shipped"] else "none", label=label, zorder=3)
    for name, value in GATES:
        ax.axvline(value, color="grey", linestyle=":", linewidth=1)
        ax.text(value, 0.02, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, color="grey", rotation=90,
                va="bottom")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(FLOOR / 3, 1.0)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(xlabel=f"1 - min cosine vs eager (log scale; {FLOOR:g} and below drawn at {FLOOR:g})",
           ylabel=f"speed-up over eager, p50 at b{point[0]} s{point[1]} (x)",
           title=f"speed-up (batch {point[0]}, sequence {point[1]}) against distance from eager")
    ax.grid(True, which="major", alpha=0.3)


def _bars(ax: Any, rows: list[dict[str, Any]], colors: dict[str, Any], key: str, text: Any) -> None:
    """Horizontal bars of ``key``, one per target in table order; hatched where the target fails the gate."""
    shown = [r for r in rows if r[key] is not None]
    bars = ax.barh([r["name"] + (" *" if r["shipped"] else "") for r in shown], [r[key] for r in shown],
                   color=[colors[r["name"]] for r in shown], edgecolor="black", linewidth=0.3)
    for bar, row in zip(bars, shown, strict=True):
        if row["verdict"] == "FAIL":
            bar.set_hatch("//")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text(row), va="center", fontsize=7)
    ax.set_xlim(0, max((r[key] for r in shown), default=1) * 1.3)
    ax.grid(True, axis="x", alpha=0.3)


def _legends(ax: Any) -> None:
    """Targets by colour, then makers by marker shape."""
    first = ax.legend(fontsize=7, loc="upper left", title="target", title_fontsize=7)
    ax.add_artist(first)
    shapes = [ax.scatter([], [], marker=m, color="black", s=30, label=g) for g, m in MARKERS.items()]
    ax.legend(handles=shapes, fontsize=7, loc="lower right", title="made by", title_fontsize=7)


def plot(targets: list[Target], point: Point, title: str, path: Path) -> Path:
    """Write the figure to ``path``: parity against speed-up, speed-up bars, best-throughput bars."""
    rows = table_rows(targets, point)
    cmap = plt.get_cmap("tab20")
    colors = {row["name"]: cmap(i % 20) for i, row in enumerate(rows)}
    fig = plt.figure(figsize=(22, 7.5), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[1.35, 1, 1])
    scatter, speed = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    tput = fig.add_subplot(grid[2], sharey=speed)
    _scatter(scatter, rows, colors, point)
    _legends(scatter)
    _bars(speed, rows, colors, "speedup_vs_eager", lambda r: f"{r['speedup_vs_eager']:.2f}x")
    speed.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    speed.invert_yaxis()
    speed.tick_params(axis="y", labelsize=8)
    speed.set(xlabel=f"speed-up over eager, p50 at b{point[0]} s{point[1]} (x; dashed: eager)",
              title="latency speed-up (hatched: fails the gate; * shipped)")
    _bars(tput, rows, colors, "best_throughput", lambda r: f"{r['best_throughput']:.0f} (b{r['best_batch']})")
    tput.tick_params(axis="y", labelleft=False)
    seqs = sorted({r["best_seq"] for r in rows if r["best_seq"] is not None})
    tput.set(xlabel=f"best throughput (samples/s at sequence {', '.join(map(str, seqs))}; best batch in brackets)",
             title="throughput at the best batch")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
