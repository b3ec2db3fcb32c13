"""The peers report: markdown with the table, the failures, every grid point, how each target was
made, the machine and both environments' library versions; and the raw results as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.peer_table import Point, Target, table_rows
from pipeline.core.store import json_safe


def num(value: float | None, fmt: str, suffix: str = "") -> str:
    """A number formatted, or '-' when missing (or not finite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt) + suffix


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub markdown table (pipes in cells escaped)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]]


def with_interval(value: float | None, ci95: list[float] | None) -> str:
    """'1.92x [1.85, 2.01]', or '-'."""
    if value is None:
        return "-"
    return f"{value:.2f}x" + (f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 else "")


def against(row: dict[str, Any]) -> str:
    """The shipped artifact against one target in words: faster or slower by a ratio and its interval,
    or not told apart when the interval holds 1."""
    value, ci95 = row["shipped_latency_ratio"], row["shipped_latency_ci95"]
    if value is None or ci95 is None:
        return "-"
    if ci95[0] <= 1.0 <= ci95[1]:
        return f"not told apart ({with_interval(value, ci95)})"
    if value >= 1.0:
        return f"faster by {with_interval(value, ci95)}"
    return f"slower by {with_interval(1 / value, [1 / ci95[1], 1 / ci95[0]])}"


def at(point: Point) -> str:
    """'b1 s128'."""
    return f"b{point[0]} s{point[1]}"


def summary(targets: list[Target], point: Point, busy: float = 0.10) -> list[str]:
    """The main table, one row per target (a dagger: other processes used more than ``busy`` of the
    cores while it was measured)."""
    rows = []
    for r in table_rows(targets, point):
        name = f"**{r['name']}** (shipped)" if r["shipped"] else r["name"]
        if (r["others_cpu_share"] or 0) > busy:
            name += f" † {r['others_cpu_share']:.0%}"
        best_at = f"{r['best_batch']}" if r["best_batch"] is not None else "-"
        rows.append([name, r["group"], r["precision"], r["verdict"], num(r["max_abs"], ".2e"), num(r["cos_min"], ".6f"),
                     num(r["p50_ms"], ".2f"), with_interval(r["speedup_vs_eager"], r["speedup_vs_eager_ci95"]),
                     best_at, num(r["ms_per_call_at_best"], ".1f"), num(r["best_throughput"], ".1f"),
                     "shipped" if r["shipped"] else against(r), num(r["shipped_throughput_ratio"], ".2f", "x")])
    header = ["target", "made by", "precision", "parity (project gate)", "max abs err vs eager", "min cosine",
              f"p50 ms ({at(point)})", f"speed-up over eager ({at(point)}) [95%]", "best batch",
              "ms/call at best batch", "best samples/s", f"shipped against it ({at(point)} latency) [95%]",
              "shipped faster by (best samples/s)"]
    return md_table(header, rows)


def failures(targets: list[Target]) -> list[str]:
    """One line per target that could not be built, checked or benchmarked, with the reason."""
    lines = []
    for t in targets:
        reasons = [t.error] if t.error else []
        if t.bench and t.bench.get("error"):
            reasons.append(f"benchmark: {t.bench['error']}")
        if t.parity and t.parity.get("failures"):
            reasons.append("parity gate: " + "; ".join(t.parity["failures"]))
        if reasons:
            lines.append(f"- **{t.name}**: " + " / ".join(r for r in reasons if r))
    return lines


def grid(targets: list[Target]) -> list[str]:
    """Every measured (batch, seq) point of every target."""
    rows = []
    for t in targets:
        for r in (t.bench or {}).get("rows", []):
            rows.append([t.name, str(r["batch"]), str(r["seq"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", f"{r['cv']:.3f}", f"{r['throughput']:.1f}",
                         num(r.get("peak_rss_mb"), ".0f"), "unstable" if r.get("unstable") else ""])
        search = (t.bench or {}).get("best_batch")
        if search:
            curve = ", ".join(f"{p['batch']}: {p['throughput']:.0f}" for p in search.get("curve", []))
            rows.append([t.name, f"search at s{search['seq']}", "", "", "", "", "", curve,
                         "", f"stopped by {search.get('stopped_by', '-')}"])
    return md_table(["target", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "CV", "samples/s", "peak RSS MB",
                     "flag"], rows)


def made(targets: list[Target]) -> list[str]:
    """How each target was made, its size and fused operators."""
    rows = []
    for t in targets:
        s = t.stats
        ops = ", ".join(f"{k} {v}" for k, v in sorted((s.get("ops") or {}).items()))
        size = f"{s['bytes'] / 2**20:.1f} MB" if s.get("bytes") else "-"
        load = (f"{s['others_cpu_share_before']:.0%} / {s['others_cpu_share']:.0%}"
                if "others_cpu_share" in s and "others_cpu_share_before" in s else "-")
        rows.append([t.name, t.how or "-", size, str(s.get("nodes", "-")), ops or "-", num(s.get("seconds"), ".1f"),
                     load])
    return md_table(["target", "how it was made", "size", "nodes", "fused / quantized operators", "build s",
                     "others' CPU share before / during its benchmark"], rows)


def real_data(targets: list[Target]) -> list[str]:
    """Sentences per second through tokenize and run, where the real-data run was asked for."""
    rows = [[t.name, num(r.get("padded_sentences_per_s"), ".1f"), num(r.get("sorted_sentences_per_s"), ".1f")]
            for t in targets if (r := (t.bench or {}).get("real_data"))]
    if not rows:
        return []
    return ["## Real sentences (tokenize and run, sentences/s)", "",
            *md_table(["target", "padded to max length", "sorted by length"], rows), ""]


def environment(meta: dict[str, Any]) -> list[str]:
    """The machine fingerprint and both environments' versions."""
    env = meta.get("fingerprint") or {}
    lines = ["## Machine and libraries", ""]
    if env:
        lines.append(f"- Machine: {env.get('cpu')}, {env.get('usable_cores')} usable of {env.get('logical_cores')} "
                     f"logical cores, {env.get('threads')} intra-op threads and {env.get('inter_op_threads')} inter-op "
                     f"thread for torch and onnxruntime, device {env.get('device')}; Python {env.get('python')}, "
                     f"{env.get('platform')}.")
    for label, key in (("Main environment (.venv)", "versions"), ("Optimum environment (.venv-optimum)",
                       "optimum_versions"), ("optimum-intel environment (.venv-intel)", "intel_versions"),
                       ("Olive environment (.venv-olive)", "olive_versions")):
        versions = meta.get(key) or {}
        text = ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "not available"
        lines.append(f"- {label}: {text}.")
    if meta.get("git"):
        lines.append(f"- This project: commit {meta['git']}.")
    lines += [f"- {note}" for note in meta.get("notes", [])]
    return [*lines, ""]


def settings(meta: dict[str, Any]) -> list[str]:
    """Grid, protocol, timings of the run's phases, and the command."""
    lines = ["## Settings and timings", ""]
    for key, value in (meta.get("settings") or {}).items():
        lines.append(f"- {key}: {value}")
    timings = meta.get("timings") or {}
    if timings:
        lines.append("- Phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if meta.get("command"):
        lines.append(f"- Command: `{meta['command']}`")
    return [*lines, ""]


def leaders(targets: list[Target], point: Point) -> list[str]:
    """The fastest target at ``point`` among those that pass the project's gate, and overall."""
    rows = [r for r in table_rows(targets, point) if r["p50_ms"] is not None]
    passing = [r for r in rows if r["verdict"] == "pass"]
    lines = []
    for label, pool in (("passing the project's gate", passing), ("overall", rows)):
        if pool:
            r = min(pool, key=lambda r: r["p50_ms"])
            gate = "" if r["verdict"] == "pass" else f", fails the gate with min cosine {num(r['cos_min'], '.4f')}"
            lines.append(f"Fastest at {at(point)}, {label}: **{r['name']}** ({r['p50_ms']:.2f} ms{gate}).")
    return [" ".join(lines), ""] if lines else []


def rule_text(rule: dict[str, Any] | None) -> str:
    """The recipe's ship rule in words."""
    rule = rule or {}
    if rule.get("step"):
        return f"step {rule['step']}"
    if rule.get("fastest_at"):
        return (f"the passing artifact fastest over eager at {at(tuple(rule['fastest_at']))} when its 95% interval "
                "separates it from the next, else the best parity of those it is not told apart from")
    return "the last artifact of the chain that passes"


def markdown(targets: list[Target], meta: dict[str, Any]) -> str:
    """The whole report."""
    point = tuple(meta["point"])
    shipped = next((t.name for t in targets if t.shipped), None)
    lines = [f"# {meta['recipe']} against its peers ({meta['date']})", "",
             f"Model: `{meta.get('model', '?')}` ({meta.get('task', '?')}). Every target ran in its own process "
             "through this project's benchmark worker (`pipeline.bench.worker`: same inputs, warm-up, repeats, "
             "statistics, threads and best-batch search); parity is this project's, against eager PyTorch on the "
             "recipe's reference cases, over the positions the attention mask keeps, judged by the project's "
             "gate for the target's precision.", "",
             (f"This project ships **{shipped}** (the recipe's ship rule: {rule_text(meta.get('ship_rule'))})."
              if shipped else "**This project ships nothing: no artifact it may ship passed the gate.**"), "",
             *leaders(targets, point),
             *summary(targets, point, meta.get("busy_threshold", 0.10)), "",
             f"Every target was measured in the same interleaved rounds at each point ({meta.get('rounds', '?')} "
             f"rounds; {meta.get('ship_point_rounds', meta.get('rounds', '?'))} at {at(point)}; the order rotated each "
             "round, a pause before each turn); a ratio is taken within a round and "
             "summarized as the median over rounds with a 95% bootstrap interval in brackets. Speed-up over eager: "
             f"eager's latency over the target's at {at(point)}. *Shipped against it*: the target's latency over "
             "the shipped artifact's (faster by, slower by, or not told apart when the interval holds 1.00x); "
             "*shipped faster by (best samples/s)*: shipped best samples/s / target best samples/s. *ms/call at best "
             "batch*: best batch / best samples/s (back-to-back calls). † n%: other processes kept n% of the cores "
             "busy while the benchmark ran; its numbers are suspect.", ""]
    if meta.get("plot"):
        lines += [f"![speed-up over eager against parity]({meta['plot']})", ""]
    lines += meta.get("drift", [])
    missed = failures(targets)
    if missed:
        lines += ["## Failed, or missed the project's gate", "", *missed, ""]
    lines += ["## Every grid point", "", *grid(targets), ""]
    lines += real_data(targets)
    lines += ["## How each target was made, and the load while it was measured", "", *made(targets), "",
              "Build s: seconds to build the peer (torch.compile: its first call, the compilation).", ""]
    lines += environment(meta) + settings(meta)
    return "\n".join(lines) + "\n"




def to_json(targets: list[Target], meta: dict[str, Any]) -> dict[str, Any]:
    """Raw results: the settings and environment, every target, and the table's rows."""
    return json_safe({"meta": meta, "targets": [dataclasses.asdict(t) for t in targets],
                   "table": table_rows(targets, tuple(meta["point"]))})


def write(targets: list[Target], meta: dict[str, Any], md_path: Path) -> tuple[Path, Path]:
    """Write the markdown and the JSON beside it; returns their paths."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(targets, meta), encoding="utf-8")
    json_path = md_path.with_suffix(".json")
    json_path.write_text(json.dumps(to_json(targets, meta), indent=1, default=str, allow_nan=False), encoding="utf-8")
    return md_path, json_path
