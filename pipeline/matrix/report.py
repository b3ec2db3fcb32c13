"""The matrix report, from matrix.json: matrix.md (every cell, and the best per model on each kind of
machine) and plots/speedup.png. Ratios are ranked only among cells measured on the same kind of
machine (CPU model, threads, device) unless the matrix says ``compare: all``."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.core.errors import BadInputError
from pipeline.core.seal import read_record
from pipeline.core.store import write_bytes_atomic, write_text_atomic
from pipeline.matrix.cell import plain
from pipeline.matrix.state import RECORD, WHAT, entries

Entry = dict[str, Any]
Ratio = tuple[float, float, float, bool]  # ratio, low and high end of its 95% interval, unstable
COMPARES = ("same_machine", "all")


def _number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (a string, a bool, a list)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, missing: str = "-") -> str:
    """A value as one table cell: no escape codes, no line breaks, no column separators."""
    if value is None or value == "":
        return missing
    return " ".join(plain(str(value)).split()).replace("|", "/")


def summary_of(entry: Entry) -> dict[str, Any]:
    return _mapping(entry.get("summary"))


def ratio_of(summary: dict[str, Any]) -> Ratio | None:
    """The summary's ratio over eager with its interval, when it has one of the right shape."""
    found = _mapping(summary.get("ratio"))
    value, interval = _number(found.get("ratio")), found.get("ci95")
    if value is None or not isinstance(interval, list | tuple) or len(interval) != 2:
        return None
    low, high = _number(interval[0]), _number(interval[1])
    if low is None or high is None:
        return None
    return value, low, high, found.get("unstable") is True


def machine_kind(summary: dict[str, Any]) -> str:
    """'AMD EPYC 9B14, 2 threads, cpu': what makes two timings comparable."""
    found = _mapping(summary.get("machine"))
    if not found:
        return "not measured"
    return f"{_text(found.get('cpu'), 'None')}, {_text(found.get('threads'), 'None')} threads, " \
           f"{_text(found.get('device'), 'None')}"


def _ratio_text(summary: dict[str, Any]) -> str:
    ratio = ratio_of(summary)
    if ratio is None:
        return "-"
    value, low, high, unstable = ratio
    return f"{value:.2f}x [{low:.2f}, {high:.2f}]" + ("?" if unstable else "")


def _mb(size: Any) -> str:
    value = _number(size)
    return f"{value / 1e6:.1f}" if value else "-"


def _cos(summary: dict[str, Any]) -> str:
    value = _number(summary.get("cos_min"))
    return f"{value:.4f}" if value is not None else "-"


def best_per_kind(cells: list[Entry], compare: str) -> dict[str, dict[str, Entry]]:
    """Kind of machine (or 'all') -> model -> its cell that shipped with the highest ratio over eager."""
    best: dict[str, dict[str, Entry]] = defaultdict(dict)
    highest: dict[tuple[str, str], float] = {}
    for entry in entries({"cells": cells}, "matrix record"):
        summary = summary_of(entry)
        ratio = ratio_of(summary)
        if type(entry.get("exit_code")) is not int or entry["exit_code"] != 0 or ratio is None:
            continue
        kind = machine_kind(summary) if compare == "same_machine" else "all"
        model = entry["cell"]["model"]
        if (kind, model) not in highest or ratio[0] > highest[kind, model]:
            best[kind][model], highest[kind, model] = entry, ratio[0]
    return best


def _cell_row(entry: Entry) -> str:
    summary = summary_of(entry)
    reused = " (reused)" if entry.get("reused") is True else ""
    return (f"| {_text(entry['cell']['name'])}{reused} | {_text(entry['cell']['model'])} | "
            f"{_text(summary.get('shipped_step'))} | {_text(summary.get('format'))} | "
            f"{_text(summary.get('precision'))} | {_cos(summary)} | {_ratio_text(summary)} | "
            f"{_mb(summary.get('artifact_bytes'))} | {machine_kind(summary)} | "
            f"{_text(entry.get('exit_code'), 'None')} | {_text(entry.get('message'), '')} |")


def _best_row(model: str, entry: Entry) -> str:
    summary = summary_of(entry)
    return (f"| {_text(model)} | {_text(entry['cell']['name'])} | {_text(summary.get('shipped_step'))} "
            f"({_text(summary.get('format'))}, {_text(summary.get('precision'))}) | {_ratio_text(summary)} | "
            f"{_cos(summary)} |")


def markdown(matrix: dict[str, Any]) -> str:
    """matrix.md; a field of the wrong type shows as missing, a cell entry without a name is left out."""
    cells = entries(matrix, "matrix record")
    lines = [f"# Matrix {_text(matrix.get('matrix'))}", ""]
    if isinstance(matrix.get("description"), str) and matrix["description"]:
        lines += [_text(matrix["description"]), ""]
    random = [_text(e["cell"]["name"]) for e in cells if summary_of(e).get("random_weights") is True]
    address = matrix.get("address")
    lines += [f"Ray: {_text(address) if isinstance(address, str) and address else 'local instance'}. Speed-up: "
              "the shipped artifact over eager at the ship point, the median of interleaved rounds with its 95% "
              "interval (? when flagged unstable)."]
    if random:
        lines += ["", f"RANDOM WEIGHTS (seeded) in {', '.join(random)}: their parity and speed are real, their "
                      "outputs mean nothing."]
    lines += ["", "| cell | model | shipped | runtime | precision | min cosine | speed-up over eager | model MB | "
              "machine | exit | message |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_cell_row(entry) for entry in cells]
    compare = str(matrix["compare"]) if matrix.get("compare") in COMPARES else COMPARES[0]
    lines += ["", "## Best per model" + (" on each kind of machine" if compare == "same_machine" else ""), ""]
    best = best_per_kind(cells, compare)
    if not best:
        lines.append("No cell shipped a benchmarked artifact.")
    for kind, models in best.items():
        lines += [f"### {kind}", "", "| model | best cell | shipped | speed-up over eager | min cosine |",
                  "|---|---|---|---|---|"]
        lines += [_best_row(model, entry) for model, entry in models.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def speedup_plot(matrix: dict[str, Any], path: Path) -> bool:
    """plots/speedup.png: each benchmarked cell's ratio over eager with its interval, colored by kind of
    machine; False when no cell has a ratio."""
    rows = [(_text(e["cell"]["name"]), machine_kind(summary_of(e)), ratio)
            for e in entries(matrix, "matrix record") if (ratio := ratio_of(summary_of(e))) is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({kind for _, kind, _ in rows})
    colors = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(rows)))
    for index, (_, kind, (value, low, high, _)) in enumerate(rows):
        ax.barh(index, value, color=colors[kind], xerr=[[max(value - low, 0)], [max(high - value, 0)]], capsize=3)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("speed-up of the shipped artifact over eager (x), 95% interval")
    ax.set_title(f"matrix {_text(matrix.get('matrix'))}: shipped artifact per cell")
    for kind in kinds:
        ax.barh([], [], color=colors[kind], label=kind)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())
    return True


def write_matrix_report(folder: Path, matrix: dict[str, Any] | None = None) -> Path:
    """Write matrix.md and the plot from ``matrix`` (by default ``folder``/matrix.json, which must carry
    this tool's seal); returns matrix.md's path."""
    if matrix is None:
        matrix = read_record(folder / RECORD, WHAT)
    if matrix is None:
        raise BadInputError(f"{folder / RECORD}: no matrix record this tool sealed; run the matrix again")
    speedup_plot(matrix, folder / "plots" / "speedup.png")
    path = folder / "matrix.md"
    write_text_atomic(path, markdown(matrix))
    return path
