"""plots/*.png, each readable without the table: titles, axis labels with units, a legend entry for every style
drawn, and only axes that hold more than one measured value. The first, what_ships.png, marks the shipped
artifact among the candidates: speed-up over eager at the ship point against parity."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pipeline.bench.spec import BenchResult, Ratio  # noqa: E402
from pipeline.core.store import write_bytes_atomic  # noqa: E402
from pipeline.report.outcome import RunResult  # noqa: E402
from pipeline.report.summary import (  # noqa: E402
    brief,
    machine,
    point_text,
    ship_candidates,
    summary_point,
    summary_rows,
    verdict,
)
from pipeline.verify.metrics import worst  # noqa: E402

DPI = 110
SHIP_PLOT = "what_ships"
# the plots of the benchmark grid, named by their x axis (the one that holds more values)
GRID_PLOTS = ("latency_vs_batch", "latency_vs_seq", "throughput_vs_seq", "throughput_vs_batch", "speedup")
KNOWN_PLOTS = (SHIP_PLOT, *GRID_PLOTS, "parity_error", "memory")
AXES = {"batch": "batch size", "seq": "sequence length (tokens)"}
STYLE: dict[str, dict[str, Any]] = {
    "shipped": {"marker": "*", "color": "gold", "markersize": 20, "markeredgecolor": "black", "zorder": 5},
    "passed": {"marker": "o", "color": "tab:blue", "markersize": 8, "zorder": 4},
    "exempt": {"marker": "o", "color": "tab:orange", "markersize": 8, "zorder": 4},
    "failed": {"marker": "X", "color": "tab:red", "markersize": 10, "zorder": 4}}
KIND_TEXT = {"shipped": "shipped", "passed": "passed its gate", "exempt": "failed its gate, exempt",
             "failed": "failed its gate (cannot ship)"}


def _targets(result: RunResult) -> list[tuple[str, BenchResult]]:
    return [(name, res) for name, res in result.bench.items() if res.get("rows")]


def _figure(width: float, height: float, **kwargs: Any) -> tuple[Any, Any]:
    return plt.subplots(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


def _save(fig: Any, path: Path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())


def _wrap(text: str, width_in: float, fontsize: float = 12) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` points (no clipped titles)."""
    return textwrap.fill(text, width=max(20, int(width_in * 72 / (fontsize * 0.56))))


def _title(result: RunResult, what: str) -> str:
    env = machine(result) or {}
    where = f"{env.get('threads')} threads, {env.get('device')}" if env else ""
    return f"{result.recipe.name}: {what}" + (f" ({where})" if where else "")


def _log_y(ax: Any, values: list[float]) -> None:
    """A log y axis with plain tick labels, enough of them to read a value whatever the range (a range within
    one decade gets ticks at 1 to 9 times its powers of ten, so no panel is left without labels)."""
    ax.set_yscale("log")
    positive = [v for v in values if v and v > 0 and math.isfinite(v)]
    decades = math.log10(max(positive) / min(positive)) if positive else 1.0
    subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs="all"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _rows(result: RunResult) -> list[dict[str, Any]]:
    return [{**r, "target": name} for name, res in _targets(result) for r in res["rows"]]


def grid_layout(result: RunResult, prefer: str) -> tuple[str, str] | None:
    """(x key, panel key) of a grid plot: the x axis whose panels of two or more x values hold the most rows
    (``prefer`` first on a tie), or None when no panel has two x values (a column of dots is no plot). The
    default grid (batch 1 at every sequence length, and the ship point) gives sequence length."""
    rows = _rows(result)
    best, score = None, 0
    for x, panel in sorted((("batch", "seq"), ("seq", "batch")), key=lambda option: option[0] != prefer):
        groups = [[r for r in rows if r[panel] == value] for value in {r[panel] for r in rows}]
        count = sum(len(members) for members in groups if len({r[x] for r in members}) > 1)
        if count > score:
            best, score = (x, panel), count
    return best


def _ratio_entries(result: RunResult) -> list[Ratio]:
    return [*result.ratios, *result.unmeasured]


def ship_plot_points(result: RunResult) -> list[dict[str, Any]]:
    """The points of what_ships.png, one per artifact: ``x`` its worst max abs error against eager (an exact
    zero at ``x_floor``, a decade under the smallest error, flagged ``exact``), ``y`` its speed-up over eager
    at the ship point and ``yerr`` (below, above) its 95% interval, ``kind`` shipped, passed, exempt or failed,
    and ``lane``: "measured", or "not measured" with ``y`` and ``yerr`` None (a ratio that is none is drawn
    in a lane of its own, never as a figure)."""
    candidates = ship_candidates(result)
    errors = [c["max_abs"] for c in candidates if c["max_abs"] and math.isfinite(c["max_abs"])]
    floor = 10.0 ** (math.floor(math.log10(min(errors))) - 1) if errors else 1e-9
    points = []
    for c in candidates:
        error = c["max_abs"]
        finite = error is not None and math.isfinite(error)
        x = error if finite and error else (floor if finite or error is None else 10 * max(errors, default=1.0))
        kind = "shipped" if c["shipped"] else "failed" if c["failed"] else "exempt" if c["verdict"] == "exempt" \
            else "passed"
        measured = c["measured"]
        low, high = c["ci95"] if measured else (None, None)
        label = c["step"] + {"shipped": " (shipped)", "failed": " (FAIL)", "exempt": " (exempt)"}.get(kind, "")
        if measured:
            label += f" {c['ratio']:.2f}x" + (f" [{low:.2f}, {high:.2f}]" if c["shipped"] else "") \
                + ("?" if c["unstable"] else "")
        else:
            label += ": " + brief(c["why"]).replace("not measured: ", "not measured, ", 1)
        points.append({"step": c["step"], "name": c["name"], "kind": kind, "shipped": c["shipped"],
                       "lane": "measured" if measured else "not measured", "x": x, "x_floor": floor,
                       "exact": finite and not error, "y": c["ratio"] if measured else None,
                       "yerr": (c["ratio"] - low, high - c["ratio"]) if measured else None,
                       "ci95": c["ci95"], "unstable": c["unstable"], "cos_min": c["cos_min"], "label": label})
    return points


def _place_labels(fig: Any, ax: Any, items: list[tuple[float, float, str, float, dict[str, Any]]]) -> None:
    """Labels (x, y, text, gap from the point in points, text style) beside their points, moved up (with a
    leader line) until none overlaps another; to the left of the point where the right would leave the axes."""
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for x, y, text, gap, style in sorted(items, key=lambda item: ax.transData.transform((item[0], item[1]))[1]):
        px, py = ax.transData.transform((x, y))
        pixels = gap * fig.dpi / 72
        label = ax.annotate(text, (x, y), xytext=(px + pixels, py), textcoords="figure pixels", va="center",
                            fontsize=8, annotation_clip=False, **style)
        extent = label.get_window_extent(renderer)
        if extent.x1 > box.x1:
            label.set_position((px - pixels - extent.width, py))
        for _ in range(len(placed) + 1):
            extent = label.get_window_extent(renderer)
            hit = next((other for other in placed if extent.overlaps(other)), None)
            if hit is None:
                break
            label.set_position((label.get_position()[0], hit.y1 + extent.height / 2 + 2))
        if abs(label.get_position()[1] - py) > 4:
            ax.annotate("", (x, y), xytext=label.get_position(), textcoords="figure pixels",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6}, annotation_clip=False)
        placed.append(label.get_window_extent(renderer))


def what_ships(result: RunResult, path: Path) -> None:
    """Every candidate's speed-up over eager at the ship point (median, 95% interval) against its parity
    (max abs error, log scale), the shipped one a star, failed gates a red cross, and a lane below for
    artifacts whose ratio there is not measured."""
    points = ship_plot_points(result)
    measured = [p for p in points if p["lane"] == "measured"]
    lane = [p for p in points if p["lane"] == "not measured"]
    point = summary_point(result)
    width = 10.0
    if lane:
        fig, (ax, low) = _figure(width, 6.6, nrows=2, sharex=True, gridspec_kw={"height_ratios": [6, 1]})
    else:
        (fig, ax), low = _figure(width, 6.0), None
    for kind in ("failed", "passed", "exempt", "shipped"):
        group = [p for p in measured if p["kind"] == kind]
        if group:
            ax.errorbar([p["x"] for p in group], [p["y"] for p in group],
                        yerr=[[p["yerr"][0] for p in group], [p["yerr"][1] for p in group]], linestyle="none",
                        capsize=4, ecolor="0.25", elinewidth=1, label=f"{KIND_TEXT[kind]}: median, 95% interval",
                        **STYLE[kind])
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="eager PyTorch (1x)")
    if any(p["unstable"] for p in measured):
        ax.plot([], [], linestyle="none", label=f"'?' after a ratio: its interval is wider than "
                                                f"±{result.recipe.bench.interval_tolerance:.0%} of it")
    ys = [v for p in measured for v in (p["y"] - p["yerr"][0], p["y"] + p["yerr"][1])] + [1.0]
    ax.set_ylim(min(ys) - 0.08 * (max(ys) - min(ys) + 0.1), max(ys) + 0.12 * (max(ys) - min(ys) + 0.1))
    ax.set_xscale("log")
    xs = [p["x"] for p in points]
    floor = points[0]["x_floor"] if points else 1e-9
    ax.set_xlim(min(xs) / 4, max(xs) * 4)
    if any(p["exact"] for p in points):
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(
            lambda v, _: "0 (exact)" if math.isclose(v, floor, rel_tol=1e-6) else f"{v:.0e}"))
    ax.grid(True, which="major", alpha=0.3)
    at = f"batch {point[0]}, sequence {point[1]}" if point else "the summary point"
    ax.set_ylabel(f"speed-up over eager at {at} (x, higher is better)")
    if low is not None:
        for p in lane:
            low.plot([p["x"]], [0], linestyle="none", markerfacecolor="white",
                     **{**STYLE[p["kind"]], "markersize": 8, "markeredgecolor": STYLE[p["kind"]]["color"]})
        low.set_yticks([0], ["not\nmeasured"])
        low.set_ylim(-1, 1)
        low.grid(True, which="major", axis="x", alpha=0.3)
        low.set_xlabel("max abs error against eager PyTorch (log scale, lower is better)")
        ax.plot([], [], "o", markerfacecolor="white", markeredgecolor="0.3",
                label="hollow, lane below: ratio not measured there (no interval)")
    else:
        ax.set_xlabel("max abs error against eager PyTorch (log scale, lower is better)")
    fig.suptitle(_wrap(_title(result, f"what ships: each candidate's speed-up over eager at {point_text(point)} "
                                      "against its parity"), width))
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, markerscale=0.7)
    fig.canvas.draw()  # the layout settles before the labels are placed in pixels
    fig.set_layout_engine("none")
    _place_labels(fig, ax, [(p["x"], p["y"], p["label"], STYLE[p["kind"]]["markersize"] / 2 + 3,
                             {"fontweight": "bold"} if p["shipped"] else {}) for p in measured])
    if low is not None:
        _place_labels(fig, low, [(p["x"], 0.0, p["label"], 7, {"color": "0.3"}) for p in lane])
    _save(fig, path)


def _grid_plot(result: RunResult, path: Path, layout: tuple[str, str], lines: list[tuple[str, str, str]],
               ylabel: str, title: str) -> None:
    """One panel per value of the panel key that holds two or more x values, a line per target in its colour
    for each (row key, line style, what the style means) of ``lines``; hollow markers for rows that are no
    measurement; a legend entry for every colour and style drawn."""
    x, panel = layout
    rows = _rows(result)
    values = [v for v in sorted({r[panel] for r in rows}) if len({r[x] for r in rows if r[panel] == v}) > 1]
    names = [name for name, _ in _targets(result)]
    width = max(8.0, 4.6 * len(values) + 1.0)
    entries = len(names) + (len(lines) if len(lines) > 1 else 0) + 1
    columns = max(1, min(entries, int(width // 1.9)))
    fig, axes = _figure(width, 4.4 + 0.22 * math.ceil(entries / columns), ncols=len(values), squeeze=False)
    unmeasured = False
    for ax, value in zip(axes[0], values, strict=True):
        shown: list[float] = []
        for i, name in enumerate(names):
            mine = sorted((r for r in rows if r["target"] == name and r[panel] == value), key=lambda r: r[x])
            for key, style, _ in lines:
                ax.plot([r[x] for r in mine], [r[key] for r in mine], style, color=f"C{i % 10}",
                        alpha=1.0 if style.endswith("-") and "--" not in style else 0.55)
                hollow = [r for r in mine if not r.get("measured", True)]
                if hollow and "o" in style:
                    unmeasured = True
                    ax.plot([r[x] for r in hollow], [r[key] for r in hollow], "o", color=f"C{i % 10}",
                            markerfacecolor="white")
                shown += [r[key] for r in mine]
        xs = sorted({r[x] for r in rows if r[panel] == value})
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xticks(xs, [str(v) for v in xs])
        _log_y(ax, shown)
        ax.grid(True, which="major", alpha=0.3)
        ax.set(xlabel=AXES[x], ylabel=ylabel, title=f"{AXES[panel].split(' (')[0]} {value}")
    handles: list[Any] = [Line2D([], [], color=f"C{i % 10}", marker="o", label=name) for i, name in enumerate(names)]
    if len(lines) > 1:
        handles += [Line2D([], [], color="black", linestyle="--" if "--" in style else "-",
                           marker="o" if "o" in style else None, label=meaning) for _, style, meaning in lines]
    if unmeasured:
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle="none",
                              label="hollow: point not measured"))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8)
    fig.suptitle(_wrap(_title(result, title), width))
    _save(fig, path)


def latency(result: RunResult, path: Path, layout: tuple[str, str]) -> None:
    """p50 (solid) and p90 (dashed) latency against the grid's longer axis, a line per target."""
    _grid_plot(result, path, layout, [("p50_ms", "o-", "p50 (solid)"), ("p90_ms", "--", "p90 (dashed)")],
               "latency (ms, log scale)", f"latency against {AXES[layout[0]].split(' (')[0]}, p50 and p90")


def throughput(result: RunResult, path: Path, layout: tuple[str, str]) -> None:
    """Measured samples per second against the grid's longer axis, a line per target."""
    _grid_plot(result, path, layout, [("throughput", "o-", "measured samples/s")], "throughput (samples/s, log scale)",
               f"measured throughput against {AXES[layout[0]].split(' (')[0]}")


def speedup(result: RunResult, path: Path) -> None:
    """Speed-up over eager per artifact at every point it was measured at, each against eager in the same
    rounds (like with like), with its 95% interval: a panel per batch size, a bar per sequence length, the
    ship point's bars hatched; a point without a ratio says 'not measured'."""
    entries = _ratio_entries(result)
    points = sorted({(e["batch"], e["seq"]) for e in entries})
    batches, seqs = sorted({b for b, _ in points}), sorted({s for _, s in points})
    ship = summary_point(result)
    steps = [(r["step"], r["name"], r["verdict"], r["shipped"]) for r in summary_rows(result)
             if any(e["target"] == r["name"] for e in entries)]
    at = {(e["target"], e["batch"], e["seq"]): e for e in entries}
    height = 0.8 / len(seqs)
    width = max(10.0, 4.0 * len(batches) + 3.0)
    fig, axes = _figure(width, max(3.0, 0.28 * len(seqs) * len(steps) + 2.4), ncols=len(batches), sharey=True,
                        squeeze=False)
    top = max([1.0, *(e["ci95"][1] for e in entries if e.get("measured", True))])
    for ax, batch in zip(axes[0], batches, strict=True):
        for i, (_, name, _, _) in enumerate(steps):
            for j, seq in enumerate(seqs):
                entry = at.get((name, batch, seq))
                y = i - 0.4 + height * (j + 0.5)
                if entry is None:
                    continue
                if not entry.get("measured", True):
                    ax.text(0.02 * top, y, "not measured", va="center", fontsize=7, color="0.35", style="italic")
                    continue
                low, high = entry["ci95"]
                ax.barh(y, entry["ratio"], height=height * 0.9, color=f"C{j % 10}",
                        hatch="//" if (batch, seq) == ship else None, edgecolor="white",
                        xerr=[[entry["ratio"] - low], [high - entry["ratio"]]], capsize=2, ecolor="black")
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xlim(0, top * 1.08)
        ax.set_title(f"batch size {batch}")
        ax.set_xlabel("speed-up over eager (x, higher is better)")
    first = axes[0][0]
    first.set_yticks(range(len(steps)), [f"{s} ({v})" + (", shipped" if shipped else "")
                                         for s, _, v, shipped in steps])
    for tick, (_, _, _, shipped) in zip(first.get_yticklabels(), steps, strict=True):
        tick.set_fontweight("bold" if shipped else "normal")
    first.invert_yaxis()
    rounds = {(e["batch"], e["seq"]): e for e in entries}
    handles: list[Any] = [Patch(color=f"C{j % 10}", label=f"sequence length {seq}") for j, seq in enumerate(seqs)]
    if ship in rounds:
        entry = rounds[ship]
        handles.append(Patch(facecolor="0.7", hatch="//", edgecolor="white",
                             label=f"hatched: the ship point {point_text(ship)}, {entry.get('rounds')} rounds"
                                   + (f" over {entry['generations']} generations of processes"
                                      if entry.get("generations", 1) > 1 else "")))
    handles += [Line2D([], [], color="black", marker="|", markersize=9, label="95% interval"),
                Line2D([], [], color="black", linewidth=1, label="eager PyTorch (1x)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(_wrap(_title(result, "speed-up over eager at each measured point, against eager in the same "
                                      "rounds"), width))
    _save(fig, path)


def parity_error(result: RunResult, path: Path) -> None:
    """Worst max-abs error and 1 - min cosine per artifact against eager, log scale, coloured by verdict."""
    rows = []
    for step in result.steps:
        parity = result.parity.get(step.name)
        if parity and parity.metrics:
            rows.append((step.folder, verdict(result, step.name), worst(parity.metrics, "max_abs", max),
                         max(1e-12, 1 - (worst(parity.metrics, "cos_min", min) or 0.0))))
    fig, ax = _figure(10.0, 0.5 * len(rows) + 2.4)
    ys = range(len(rows))
    palette = {"pass": "tab:green", "exempt": "tab:orange"}
    colors = [palette.get(v, "tab:red") for _, v, _, _ in rows]
    ax.barh([y + 0.2 for y in ys], [max(1e-12, r[2] or 0.0) for r in rows], height=0.4, color=colors)
    ax.barh([y - 0.2 for y in ys], [r[3] for r in rows], height=0.4, color=colors, alpha=0.45)
    ax.set_xscale("log")
    ax.set_yticks(list(ys), [f"{name} ({v})" for name, v, _, _ in rows])
    ax.set_xlabel("error against eager PyTorch (log scale, lower is better; exact zeros drawn at 1e-12)")
    handles: list[Any] = [Patch(color="0.3", label="max abs error (upper bar)"),
               Patch(color="0.3", alpha=0.45, label="1 - min cosine (lower, light bar)")]
    handles += [Patch(color=color, label=text) for text, color in
                (("passed its gate", "tab:green"), ("failed, exempt", "tab:orange"), ("FAILED its gate", "tab:red"))
                if color in colors]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(_wrap(f"{result.recipe.name}: parity error per artifact", 10.0))
    _save(fig, path)


def memory(result: RunResult, path: Path) -> None:
    """Peak resident memory of each target's benchmark process, and each artifact's file size."""
    names = [name for name, res in result.bench.items() if res.get("peak_rss_mb")]
    sizes = {r["name"]: (r["bytes"] or 0) / 2**20 for r in summary_rows(result)}
    fig, ax = _figure(10.0, 0.5 * len(names) + 2.4)
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [result.bench[n]["peak_rss_mb"] for n in names], height=0.4,
            label="peak RSS of the benchmark process (up to its largest batch)")
    ax.barh([y - 0.2 for y in ys], [sizes.get(n, 0) for n in names], height=0.4,
            label="artifact file size (eager: none)")
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("memory (MB)")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(_wrap(_title(result, "memory per target"), 10.0))
    _save(fig, path)


def plot_names(result: RunResult) -> list[str]:
    """The plots the results allow, in the order report.md shows them: what ships first (when any candidate
    has a ratio at the ship point), then latency and throughput along the grid's axis that holds more than
    one value (none for a grid of one point), speed-up, parity and memory."""
    names = []
    if any(p["lane"] == "measured" for p in ship_plot_points(result)):
        names.append(SHIP_PLOT)
    if (layout := grid_layout(result, "batch")) is not None:
        names.append(f"latency_vs_{layout[0]}")
    if (layout := grid_layout(result, "seq")) is not None:
        names.append(f"throughput_vs_{layout[0]}")
    if result.ratios:
        names.append("speedup")
    if any(p and p.metrics for p in result.parity.values()):
        names.append("parity_error")
    if any(res.get("peak_rss_mb") for res in result.bench.values()):
        names.append("memory")
    return names


def write_plots(result: RunResult, folder: Path) -> list[Path]:
    """Write every plot the results allow and remove the ones this run does not draw (a plot of an earlier
    run's grid would otherwise be read as this run's); returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    names = plot_names(result)
    written = []
    for name in names:
        path = folder / f"{name}.png"
        if name == SHIP_PLOT:
            what_ships(result, path)
        elif name.startswith("latency_vs_"):
            latency(result, path, grid_layout(result, "batch") or ("batch", "seq"))
        elif name.startswith("throughput_vs_"):
            throughput(result, path, grid_layout(result, "seq") or ("seq", "batch"))
        else:
            {"speedup": speedup, "parity_error": parity_error, "memory": memory}[name](result, path)
        written.append(path)
    for name in set(KNOWN_PLOTS) - set(names):
        stale = folder / f"{name}.png"
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
    return written
