"""The matrix report, from matrix.json: matrix.md (every cell, and the best per model on each kind of
machine) and plots/speedup.png. Ratios are ranked only among cells measured on the same kind of
machine (CPU model, threads, device) unless the matrix says ``compare: all``."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.core.store import read_json, write_bytes_atomic, write_text_atomic

Entry = dict[str, Any]


def machine_kind(summary: dict[str, Any]) -> str:
    """'AMD EPYC 9B14, 2 threads, cpu': what makes two timings comparable."""
    found = summary.get("machine") or {}
    if not found:
        return "not measured"
    return f"{found.get('cpu')}, {found.get('threads')} threads, {found.get('device')}"


def _ratio_text(summary: dict[str, Any]) -> str:
    ratio = summary.get("ratio")
    if not ratio:
        return "-"
    low, high = ratio["ci95"]
    return f"{ratio['ratio']:.2f}x [{low:.2f}, {high:.2f}]" + ("?" if ratio.get("unstable") else "")


def _mb(size: int | None) -> str:
    return f"{size / 1e6:.1f}" if size else "-"


def _cos(summary: dict[str, Any]) -> str:
    value = summary.get("cos_min")
    return f"{value:.4f}" if value is not None else "-"


def best_per_kind(cells: list[Entry], compare: str) -> dict[str, dict[str, Entry]]:
    """Kind of machine (or 'all') -> model -> its cell that shipped with the highest ratio over eager."""
    best: dict[str, dict[str, Entry]] = defaultdict(dict)
    for entry in cells:
        summary = entry.get("summary") or {}
        if entry.get("exit_code") != 0 or not summary.get("ratio"):
            continue
        kind = machine_kind(summary) if compare == "same_machine" else "all"
        model = entry["cell"]["model"]
        held = best[kind].get(model)
        if held is None or summary["ratio"]["ratio"] > held["summary"]["ratio"]["ratio"]:
            best[kind][model] = entry
    return best


def markdown(matrix: dict[str, Any]) -> str:
    """matrix.md."""
    cells: list[Entry] = matrix["cells"]
    lines = [f"# Matrix {matrix['matrix']}", ""]
    if matrix.get("description"):
        lines += [matrix["description"], ""]
    random = [e["cell"]["name"] for e in cells if (e.get("summary") or {}).get("random_weights")]
    lines += [f"Ray: {matrix.get('address') or 'local instance'}. Speed-up: the shipped artifact over eager at the "
              "ship point, the median of interleaved rounds with its 95% interval (? when flagged unstable)."]
    if random:
        lines += ["", f"RANDOM WEIGHTS (seeded) in {', '.join(random)}: their parity and speed are real, their "
                      "outputs mean nothing."]
    lines += ["", "| cell | model | shipped | runtime | precision | min cosine | speed-up over eager | model MB | "
              "machine | exit | message |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in cells:
        summary = entry.get("summary") or {}
        reused = " (reused)" if entry.get("reused") else ""
        lines.append(f"| {entry['cell']['name']}{reused} | {entry['cell']['model']} | "
                     f"{summary.get('shipped_step') or '-'} | {summary.get('format') or '-'} | "
                     f"{summary.get('precision') or '-'} | {_cos(summary)} | {_ratio_text(summary)} | "
                     f"{_mb(summary.get('artifact_bytes'))} | {machine_kind(summary)} | {entry.get('exit_code')} | "
                     f"{(entry.get('message') or '').replace('|', '/')} |")
    compare = matrix.get("compare", "same_machine")
    lines += ["", "## Best per model" + (" on each kind of machine" if compare == "same_machine" else ""), ""]
    best = best_per_kind(cells, compare)
    if not best:
        lines.append("No cell shipped a benchmarked artifact.")
    for kind, models in best.items():
        lines += [f"### {kind}", "", "| model | best cell | shipped | speed-up over eager | min cosine |",
                  "|---|---|---|---|---|"]
        for model, entry in models.items():
            summary = entry["summary"]
            lines.append(f"| {model} | {entry['cell']['name']} | {summary['shipped_step']} ({summary['format']}, "
                         f"{summary['precision']}) | {_ratio_text(summary)} | {_cos(summary)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def speedup_plot(matrix: dict[str, Any], path: Path) -> bool:
    """plots/speedup.png: each benchmarked cell's ratio over eager with its interval, colored by kind of
    machine; False when no cell has a ratio."""
    rows = [(e["cell"]["name"], e["summary"]) for e in matrix["cells"] if (e.get("summary") or {}).get("ratio")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({machine_kind(summary) for _, summary in rows})
    colors = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(rows)))
    for index, (_, summary) in enumerate(rows):
        ratio = summary["ratio"]
        low, high = ratio["ci95"]
        ax.barh(index, ratio["ratio"], color=colors[machine_kind(summary)],
                xerr=[[ratio["ratio"] - low], [high - ratio["ratio"]]], capsize=3)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("speed-up of the shipped artifact over eager (x), 95% interval")
    ax.set_title(f"matrix {matrix['matrix']}: shipped artifact per cell")
    for kind in kinds:
        ax.barh([], [], color=colors[kind], label=kind)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())
    return True


def write_matrix_report(folder: Path) -> Path:
    """Write matrix.md and the plot from ``folder``/matrix.json; returns matrix.md's path."""
    matrix = read_json(folder / "matrix.json")
    assert matrix is not None
    speedup_plot(matrix, folder / "plots" / "speedup.png")
    path = folder / "matrix.md"
    write_text_atomic(path, markdown(matrix))
    return path
