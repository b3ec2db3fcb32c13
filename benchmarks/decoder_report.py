"""The decoder peers table: per target its tokens/s and ratio over eager (interleaved rounds, 95%
intervals), and its token gate (token match, sequences equal, perplexity, the int8 and int4 presets).

Pure functions over plain results, so they are tested on fake ones (tests/test_decoder_peers.py).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.decoder_gate import PRESETS
from benchmarks.peer_table import Target
from pipeline.bench.rounds import bootstrap_interval
from pipeline.core.store import json_safe


def grid_row(bench: dict[str, Any] | None, batch: int) -> dict[str, Any]:
    """The worker result's row at ``batch`` (empty when it has none)."""
    return next((row for row in (bench or {}).get("rows", []) if row["batch"] == batch), {})


def round_speeds(bench: dict[str, Any] | None, batch: int, new_tokens: int) -> list[float]:
    """Tokens/s of each round at ``batch`` (batch x new tokens over the round's median generation time)."""
    return [batch * new_tokens / (ms / 1e3) for ms in grid_row(bench, batch).get("round_p50_ms", []) if ms > 0]


def speed(bench: dict[str, Any] | None, batch: int, new_tokens: int, label: str) -> dict[str, Any] | None:
    """Median tokens/s over the rounds with a 95% bootstrap interval (None when nothing was timed);
    ``measured`` is False when the point's rounds could not carry a ratio (pipeline.bench.rounds)."""
    values = round_speeds(bench, batch, new_tokens)
    if not values:
        return None
    low, high = bootstrap_interval(values, seed=zlib.crc32(label.encode()))
    return {"tokens_per_s": float(np.median(values)), "ci95": [low, high], "rounds": len(values),
            "measured": grid_row(bench, batch).get("measured", True)}


def ratio_of(ratios: list[dict[str, Any]], name: str, batch: int) -> dict[str, Any] | None:
    """The session's ratio over eager of ``name`` at ``batch`` (None when there is none)."""
    return next((r for r in ratios if r["target"] == name and r["batch"] == batch), None)


def row(target: Target, ratios: list[dict[str, Any]], batches: tuple[int, ...], new_tokens: int) -> dict[str, Any]:
    """One target's line of the table, as plain values."""
    gate = target.parity or {}
    metrics = gate.get("metrics", {})
    match, change = metrics.get("generation"), metrics.get("perplexity")
    out: dict[str, Any] = {
        "target": target.name, "runtime": target.group, "weights": target.precision,
        "detail": target.stats.get("weights") or target.how, "shipped": target.shipped, "error": target.error,
        "speed": {}, "reference": bool(gate.get("reference")),
        "token_match": match["share"] if match else None,
        "sequences_equal": match["sequences_share"] if match else None,
        "perplexity": change["artifact"] if change else None,
        "perplexity_increase": change["increase"] if change else None,
        "gate": {name: v["passed"] for name, v in gate.get("verdicts", {}).items()},
        "gate_failures": {name: v["failures"] for name, v in gate.get("verdicts", {}).items() if v["failures"]},
    }
    for batch in batches:
        measured = speed(target.bench, batch, new_tokens, f"{target.name}/{batch}")
        entry = ratio_of(ratios, target.name, batch)
        if measured is not None:
            measured["vs_eager"] = None if entry is None else \
                {"ratio": entry["ratio"], "ci95": entry["ci95"], "rounds": entry["rounds"],
                 "measured": entry.get("measured", True), "reasons": entry.get("reasons", [])}
            if target.name == "eager":
                measured["vs_eager"] = {"ratio": 1.0, "ci95": [1.0, 1.0], "rounds": measured["rounds"],
                                        "measured": measured["measured"]}
        out["speed"][batch] = measured
    return out


def interval_text(value: float, ci95: list[float], digits: int, suffix: str = "") -> str:
    """'12.3 [11.9, 12.8]'."""
    return f"{value:.{digits}f}{suffix} [{ci95[0]:.{digits}f}, {ci95[1]:.{digits}f}]"


def cells(line: dict[str, Any], batches: tuple[int, ...]) -> list[str]:
    """A table line's cells."""
    name = f"**{line['target']}**" if line["shipped"] else line["target"]
    out = [name, line["runtime"], line["weights"]]
    for batch in batches:
        measured = line["speed"].get(batch)
        if measured is None:
            out += ["not measured", "-"]
            continue
        ratio = measured.get("vs_eager")
        ratio_text = "-" if not ratio else interval_text(ratio["ratio"], ratio["ci95"], 2, "x") \
            if ratio.get("measured", True) else "not measured"
        speed_text = interval_text(measured["tokens_per_s"], measured["ci95"], 1)
        out += [speed_text if measured.get("measured", True) else f"not measured ({speed_text})", ratio_text]
    if line["reference"]:
        return out + ["reference", "reference", f"{line['perplexity']:.3f}" if line["perplexity"] else "-",
                      "reference", "reference"]
    if line["token_match"] is None:
        return out + ["-", "-", "-", *(["-"] * len(PRESETS))]
    ppl = f"{line['perplexity']:.3f} ({line['perplexity_increase']:+.2%})" if line["perplexity"] is not None else "-"
    gates = ["pass" if line["gate"].get(p) else "fail" for p in PRESETS]
    return out + [f"{line['token_match']:.4f}", f"{line['sequences_equal']:.4f}", ppl, *gates]


def markdown_table(lines: list[dict[str, Any]], batches: tuple[int, ...]) -> str:
    """The table in Markdown."""
    header = ["target", "runtime", "weights"]
    for batch in batches:
        header += [f"tokens/s b{batch} [95%]", f"vs eager b{batch} [95%]"]
    header += ["token match", "sequences equal", "perplexity (+%)", *(f"{p} gate" for p in PRESETS)]
    body = [cells(line, batches) for line in lines if line["error"] is None]
    text = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    text += ["| " + " | ".join(cell) + " |" for cell in body]
    return "\n".join(text)


def rounds_text(ratios: list[dict[str, Any]], batches: tuple[int, ...]) -> list[str]:
    """Per batch size, how many rounds the ratios rest on and how many were dropped, or why none do."""
    out = []
    for batch in batches:
        entry = next((r for r in ratios if r["batch"] == batch), None)
        if entry is None:
            continue
        if not entry.get("measured", True):
            why = entry["reasons"][0].split(" (")[0]
            busy = f" (other processes used up to {entry['others_cpu_max']:.0%} of the cores)" \
                if entry.get("others_cpu_max") is not None else ""
            out.append(f"- batch {batch}: {why}{busy}; its numbers are shown in brackets only")
        else:
            out.append(f"- batch {batch}: ratios over {entry['rounds']} rounds, {entry.get('dropped', 0)} more "
                       "dropped as disturbed")
    return out


def failures_text(lines: list[dict[str, Any]]) -> list[str]:
    """A bullet per target that could not be built, checked or measured."""
    return [f"- {line['target']}: {line['error']}" for line in lines if line["error"]]


def markdown(lines: list[dict[str, Any]], meta: dict[str, Any], batches: tuple[int, ...]) -> str:
    """The whole report in Markdown."""
    parts = [f"# {meta['recipe']} against its peers ({meta['date']})", "",
             f"Model: {meta['model']}. CPU: {meta['cpu']}, {meta['threads']} threads. {meta['protocol']}", "",
             markdown_table(lines, batches), ""]
    rounds = rounds_text(meta.get("ratios", []), batches)
    if rounds:
        parts += ["Rounds:", "", *rounds, ""]
    failed = failures_text(lines)
    if failed:
        parts += ["Not in the table:", "", *failed, ""]
    parts += ["How each target was made:", ""]
    parts += [f"- {line['target']}: {line['detail']}" for line in lines if line["error"] is None]
    parts += ["", *meta.get("notes", []), "", f"Command: `{meta['command']}`", ""]
    return "\n".join(parts)


def write(lines: list[dict[str, Any]], meta: dict[str, Any], batches: tuple[int, ...], md_path: Path
          ) -> tuple[Path, Path]:
    """Write the Markdown report and its JSON beside it; returns both paths."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(lines, meta, batches), encoding="utf-8")
    js_path = md_path.with_suffix(".json")
    js_path.write_text(json.dumps(json_safe({**meta, "targets": lines}), indent=1), encoding="utf-8")
    return md_path, js_path
