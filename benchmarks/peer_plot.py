"""The peers plot: speed-up over eager against distance from eager (left), best throughput (right)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib import ticker  # noqa: E402

from benchmarks.peer_table import GROUPS, Point, Target, table_rows  # noqa: E402

MARKERS = dict(zip(GROUPS, ("o", "s", "^", "D"), strict=True))
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
    ax.set(xlabel=f"1 - min cosine vs eager (log; {FLOOR:g} = exact to rounding; left is closer to eager)",
           ylabel=f"speed-up over eager, p50 at b{point[0]} s{point[1]} (x)",
           title=f"latency (batch {point[0]}, sequence {point[1]}) against parity")
    ax.grid(True, which="major", alpha=0.3)


def _bars(ax: Any, rows: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    shown = [r for r in rows if r["best_throughput"] is not None]
    names = [r["name"] + (" *" if r["shipped"] else "") for r in shown]
    values = [r["best_throughput"] for r in shown]
    bars = ax.barh(range(len(shown)), values, color=[colors[r["name"]] for r in shown],
                   hatch=None, edgecolor="black", linewidth=0.3)
    for bar, row in zip(bars, shown, strict=True):
        if row["verdict"] == "FAIL":
            bar.set_hatch("//")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {row['best_throughput']:.0f} "
                f"(b{row['best_batch']})", va="center", fontsize=7)
    ax.set_yticks(range(len(shown)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values, default=1) * 1.25)
    ax.set(xlabel="best throughput (samples/s, sequence 128; best batch in brackets)",
           title="throughput at the best batch (hatched: fails the gate; * shipped)")
    ax.grid(True, axis="x", alpha=0.3)


def plot(targets: list[Target], point: Point, title: str, path: Path) -> Path:
    """Write the two-panel figure to ``path``."""
    rows = table_rows(targets, point)
    cmap = plt.get_cmap("tab20")
    colors = {row["name"]: cmap(i % 20) for i, row in enumerate(rows)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(17, 7), gridspec_kw={"width_ratios": [1.25, 1]})
    _scatter(left, rows, colors, point)
    left.legend(fontsize=7, loc="upper left", ncol=1, title="target (marker: " + ", ".join(
        f"{m} {g}" for g, m in MARKERS.items()) + ")", title_fontsize=7)
    _bars(right, rows, colors)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
