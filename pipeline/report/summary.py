"""One row per artifact for people: what it is, whether it passed, how far from eager, how fast."""

from __future__ import annotations

import re
from typing import Any

from pipeline.bench.orchestrate import round_plans, ship_point
from pipeline.bench.spec import BenchResult, BenchRow, Ratio
from pipeline.report.outcome import RunResult
from pipeline.ship.rule import fastest_told_apart, may_ship
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


def point_text(point: tuple[int, int] | None) -> str:
    """'b1 s128', or '-' without a point."""
    return f"b{point[0]} s{point[1]}" if point else "-"


def row_at(bench: BenchResult | None, point: tuple[int, int] | None) -> BenchRow | None:
    """The target's grid row at ``point``, or None when it was not benchmarked there."""
    return next((row for row in (bench or {}).get("rows", []) if point and (row["batch"], row["seq"]) == point), None)


def measured_row(row: BenchRow | None) -> bool:
    """Whether a grid row is a measurement (False: its point's rounds could not carry one; see its reasons)."""
    return row is not None and row.get("measured", True)


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


def brief(reason: str) -> str:
    """A reason without its per-round details: 'not measured: every round was disturbed' for 'not measured:
    every round was disturbed (other processes used 42% of the cores > 15%; ...)' (the notes give the worst
    disturbance once)."""
    text = reason
    while (start := text.find(" (")) >= 0:
        depth, end = 0, -1
        for i in range(start + 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                end = i
                break
        if end < 0 or ";" not in text[start:end]:
            break
        text = text[:start] + text[end + 1:]
    return text


def _said(reasons: list[str]) -> list[str]:
    """``reasons`` briefly, each once: one whose brief text another one's already holds is left out."""
    short = [brief(why) for why in reasons]
    keys = [text.split(";")[0] for text in short]
    return [text for i, text in enumerate(short)
            if text not in short[:i] and not any(j != i and keys[i] in other and keys[i] != other
                                                 for j, other in enumerate(short))]


def _planned_generations(result: RunResult) -> dict[tuple[int, int], int]:
    """Per point, the generations of worker processes the benchmark planned (what its progress line says)."""
    plans = round_plans(result.recipe.bench, result.recipe.device, ship_point(result.recipe))
    return {point: plan.generations for point, plan in plans.items()}


def ratio_notes(result: RunResult) -> list[str]:
    """How the ratios were measured, briefly, once: the method, the points spread over several generations of
    processes (as many as the rounds that count came from, and the plan's number where that is fewer), the
    rounds noise cost; then per point what holds for every target there, said once, and what holds for one
    target alone."""
    entries = [*result.ratios, *result.unmeasured]
    if not entries:
        return []
    by_point: dict[tuple[int, int], list[Ratio]] = {}
    for entry in entries:
        by_point.setdefault((entry["batch"], entry["seq"]), []).append(entry)
    planned = _planned_generations(result)
    spread = []
    for point, group in by_point.items():
        seen = max(e.get("generations", 1) for e in group)
        plan = planned.get(point, 1)
        if seen > 1 or plan > 1:
            spread.append(f"{point_text(point)} over {seen} generation{'s' if seen > 1 else ''} of worker processes"
                          + (f" (of {plan} planned)" if seen != plan else ""))
    dropped = sum(group[0]["dropped"] for group in by_point.values())
    steal = max(e["steal_max"] for e in entries)
    others = max(e["others_cpu_max"] for e in entries)
    lines = [f"vs eager: eager's latency over the target's, the median of interleaved rounds with a 95% bootstrap "
             f"interval{'; ' if spread else ''}{'; '.join(spread)}; "
             + (f"{dropped} round(s) dropped for noise" if dropped else "no round dropped for noise")
             + f" (steal up to {steal:.0%}, other processes up to {others:.0%} of the cores)"]
    for (batch, seq), group in by_point.items():
        # a ratio that is not measured is said to be so, and with no figure (its interval's width quotes one)
        reasons = {id(e): [why for why in e.get("reasons", []) if e.get("measured", True)
                           or why.startswith("not measured") or not re.search(r"\d\.\d+x", why)] for e in group}
        shared = [why for why in reasons[id(group[0])] if all(why in reasons[id(e)] for e in group)]
        if shared and len(group) > 1:
            lines.append(f"? b{batch} s{seq}, every target: {'; '.join(_said(shared))}")
        else:
            shared = []
        lines += [f"? {e['target']} b{batch} s{seq}: {'; '.join(_said(own))}" for e in group
                  if (own := [why for why in reasons[id(e)] if why not in shared])]
    return lines


def throughput_at(bench: BenchResult | None, point: tuple[int, int] | None) -> float | None:
    """Measured samples/s at ``point`` (the same point for every target, so the column compares like with
    like); None when the target was not measured there."""
    row = row_at(bench, point)
    return row["throughput"] if measured_row(row) and row is not None else None


def verdict(result: RunResult, name: str) -> str:
    """pass, FAIL, exempt (failed but exempt from the gate), or '-'."""
    parity = result.parity.get(name)
    if parity is None:
        return "-"
    return "pass" if parity.passed else ("exempt" if parity.exempt else "FAIL")


def summary_rows(result: RunResult) -> list[dict[str, Any]]:
    """The summary table: artifact, format, precision, size, verdict, error, and at the summary point (the
    same one for every target) p50, measured throughput and the interleaved speed-up over eager with its 95%
    interval; ``point_measured`` is None where the target has no row there, False where its row is no
    measurement."""
    point = summary_point(result)
    rows = []
    for step in result.steps:
        art = result.artifacts[step.name]
        parity = result.parity.get(step.name)
        metrics = parity.metrics if parity else {}
        bench = result.bench.get(step.name)
        row = row_at(bench, point)
        ratio = ratio_at(result, step.name, point)
        rows.append({
            "step": step.folder, "name": step.name, "format": art.format.value, "precision": art.precision,
            "bytes": art.stats.get("bytes"), "verdict": verdict(result, step.name),
            "max_abs": worst(metrics, "max_abs", max), "cos_min": worst(metrics, "cos_min", min),
            "batch_cos_min": worst(parity.batch_invariance, "cos_min", min) if parity else None,
            "p50_ms": row["p50_ms"] if row is not None and measured_row(row) else None,
            "throughput": throughput_at(bench, point),
            "point_measured": None if row is None else measured_row(row),
            # a ratio that is not measured is no figure: it has neither value nor interval here
            "speedup": ratio["ratio"] if ratio and ratio.get("measured", True) else None,
            "speedup_ci95": ratio["ci95"] if ratio and ratio.get("measured", True) else None,
            "speedup_cell": speedup_cell(ratio),
            "shipped": step.name == result.shipped, "cached": result.cached.get(step.name, False),
        })
    return rows


def ship_candidates(result: RunResult) -> list[dict[str, Any]]:
    """The points of the what-ships plot, one per artifact: its speed-up over eager at the summary point with
    the 95% interval (``measured`` False, no ``ratio`` and no interval, with ``why``, where it has no ratio
    there), its parity against eager (worst max abs error and min cosine), whether it passed its gate
    (``failed``: failed and not exempt, so it cannot ship) and whether it is the shipped one."""
    point = summary_point(result)
    candidates = []
    for row in summary_rows(result):
        entry = ratio_at(result, row["name"], point)
        measured = entry is not None and entry.get("measured", True)
        why: str | None
        if entry is None:
            why = (f"not benchmarked at {point_text(point)}" if point else "not benchmarked")
            bench = result.bench.get(row["name"]) or {}
            if bench.get("error"):
                why = f"benchmark failed: {bench['error']}"
        else:
            why = None if measured else next((r for r in entry.get("reasons", []) if r.startswith("not measured")),
                                             "not measured")
        candidates.append({
            "step": row["step"], "name": row["name"], "verdict": row["verdict"], "shipped": row["shipped"],
            "failed": row["verdict"] == "FAIL", "max_abs": row["max_abs"], "cos_min": row["cos_min"],
            "measured": measured, "ratio": entry["ratio"] if measured and entry is not None else None,
            "ci95": list(entry["ci95"]) if measured and entry is not None else None,
            "unstable": bool(entry and entry.get("unstable")) and measured, "why": why,
        })
    return candidates


def _why_shipped(result: RunResult, point: tuple[int, int] | None) -> str:
    """Why the ship rule picked the shipped step, as the rule decided it."""
    ship = result.recipe.ship
    if ship.step:
        return f"the recipe names it (ship.step: {ship.step})"
    if ship.fastest_at is None:
        return "the last step of the chain that passes its gate (the recipe sets no ship.fastest_at)"
    allowed = {s.name for s in result.steps if may_ship(result.parity, s.name)}
    entries = [e for e in result.ratios if (e["batch"], e["seq"]) == point and e["target"] in allowed]
    if entries:
        chosen, note = fastest_told_apart(entries, result.parity)
        if chosen == result.shipped and note is None:
            others = sorted((e for e in entries if e["target"] != chosen), key=lambda e: e["ratio"], reverse=True)
            nxt = f" (next: {others[0]['target']} {speedup_cell(others[0])})" if others else ""
            return (f"the fastest passing artifact at {point_text(point)}, its 95% interval above every other "
                    f"passing artifact's{nxt}")
        if chosen == result.shipped and note is not None:
            return note
    return result.ship_note or (f"no passing artifact has a ratio over eager at {point_text(point)} in this run, so "
                                "the last step of the chain that passes its gate ships")


def ship_story(result: RunResult) -> dict[str, Any]:
    """What ships and why, from the run's result: the step, its speed-up [interval] at the summary point (or
    why there is none), p50 against eager's, its parity, why the rule chose it, and the rest of the ship
    note (slower than eager or its parent, batch dependence)."""
    point = summary_point(result)
    if result.shipped is None:
        failed = [s.folder for s in result.steps if verdict(result, s.name) == "FAIL"]
        return {"shipped": None, "point": point, "failed": failed}
    step = next(s for s in result.steps if s.name == result.shipped)
    candidate = next(c for c in ship_candidates(result) if c["name"] == result.shipped)
    row, eager = row_at(result.bench.get(step.name), point), row_at(result.bench.get("eager"), point)
    entry = ratio_at(result, step.name, point)
    why = _why_shipped(result, point)
    note = result.ship_note or ""
    rest = note[len(why):].lstrip("; ") if note.startswith(why) else note
    return {"shipped": step.folder, "name": step.name, "point": point, "verdict": candidate["verdict"],
            "speedup": speedup_cell(entry) if candidate["measured"] else None,
            "not_measured": None if candidate["measured"] else brief(candidate["why"]).removeprefix("not measured: "),
            "p50_ms": row["p50_ms"] if measured_row(row) and row is not None else None,
            "eager_p50_ms": eager["p50_ms"] if measured_row(eager) and eager is not None else None,
            "rounds": entry.get("rounds") if candidate["measured"] and entry is not None else None,
            "generations": entry.get("generations") if candidate["measured"] and entry is not None else None,
            "cos_min": candidate["cos_min"], "max_abs": candidate["max_abs"], "why": why, "note": rest or None}


def ship_lines(result: RunResult, strong: Any = lambda text: text) -> list[str]:
    """The what-ships paragraph as sentences (``strong`` marks the step and its speed-up: bold in report.md)."""
    story = ship_story(result)
    at = story["point"]
    where = f"batch {at[0]}, sequence {at[1]}" if at else "the summary point"
    if story["shipped"] is None:
        failed = f" ({', '.join(story['failed'])} failed)" if story["failed"] else ""
        return [f"{strong('Nothing ships')}: no artifact the recipe may ship passed its parity gate{failed}."]
    if story["speedup"] is not None:
        spread = f"{story['rounds']} rounds" + (f" over {story['generations']} generations of processes"
                                                 if (story["generations"] or 1) > 1 else "")
        p50 = (f"; p50 {story['p50_ms']:.2f} ms against eager's {story['eager_p50_ms']:.2f} ms"
               if story["p50_ms"] is not None and story["eager_p50_ms"] is not None else "")
        speed = f"{strong(story['speedup'])} over eager PyTorch at {where} ({spread}{p50})"
    else:
        speed = f"its speed-up over eager at {where} was not measured ({story['not_measured']})"
    parity = (f"min cosine {story['cos_min']:.6f} and max abs error {story['max_abs']:.2e} against eager"
              if story["cos_min"] is not None and story["max_abs"] is not None else "parity against eager unknown")
    gate = {"pass": "its gate passed", "exempt": "it failed its gate but is exempt"}.get(story["verdict"], "")
    lines = [f"{strong(story['shipped'])} ships: {speed}, at {parity}" + (f" ({gate})" if gate else "") + ".",
             f"Why: {story['why']}."]
    if story["note"]:
        lines.append(f"Note: {story['note']}.")
    return lines


def generation_matches(result: RunResult) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(step folder, greedy tokens against eager's, perplexity against eager's or None) of every step checked
    by generation."""
    verdicts = [(step.folder, result.parity[step.name]) for step in result.steps if step.name in result.parity]
    return [(folder, parity.generation, parity.perplexity) for folder, parity in verdicts if parity.generation]


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
