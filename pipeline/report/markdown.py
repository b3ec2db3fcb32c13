"""report.md: one summary table a person reads at a glance, then the details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.report.outcome import RunResult
from pipeline.report.plots import GRID_PLOTS, SHIP_PLOT, plot_names
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


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in rows]]


def _point_cell(value: float | None, fmt: str, measured: bool | None) -> str:
    return "not measured" if measured is False else _num(value, fmt)


def _summary(result: RunResult) -> list[str]:
    at = point_text(summary_point(result))
    rows = []
    for r in summary_rows(result):
        name = f"**{r['step']}** (shipped)" if r["shipped"] else r["step"]
        rows.append([name, r["format"], r["precision"], size_text(r["bytes"]), r["verdict"],
                     _num(r["max_abs"], ".2e"), _num(r["cos_min"], ".6f"), _num(r["batch_cos_min"], ".6f"),
                     _point_cell(r["p50_ms"], ".2f", r["point_measured"]),
                     _point_cell(r["throughput"], ".1f", r["point_measured"]), r["speedup_cell"]])
    header = ["artifact", "format", "precision", "size", "parity", "max abs err vs eager", "min cosine",
              "batch invariance (min cosine, alone vs padded)", f"p50 ms ({at})", f"samples/s ({at})",
              f"speed-up over eager ({at}) [95% interval]"]
    return _table(header, rows)


def _what_ships(result: RunResult, plots: list[str]) -> list[str]:
    """The first section: what ships, its speed-up and parity, why, and the plot of every candidate."""
    lines = ["## What ships and why", "", *[f"{line}  " for line in ship_lines(result, lambda t: f"**{t}**")]]
    if result.shipped is not None:
        lines.append("Bundle: `ship/`." if result.bundle is not None else "Its bundle is not in `ship/` (run `ship`).")
    lines.append("")
    if SHIP_PLOT in plots:
        lines += [f"![what ships: speed-up over eager against parity](plots/{SHIP_PLOT}.png)", ""]
    return lines


def _parity(result: RunResult) -> list[str]:
    lines = ["## Parity against eager PyTorch", ""]
    for step in result.steps:
        parity = result.parity.get(step.name)
        if parity is None:
            continue
        state = "passed" if parity.passed else ("failed, exempt from the gate" if parity.exempt else "FAILED")
        lines += [f"### {step.folder}: {state}", ""]
        lines += [f"- {failure}" for failure in parity.failures]
        rows = [[output, _num(m.get("max_abs"), ".2e"), _num(m.get("mean_abs"), ".2e"), _num(m.get("p99_abs"), ".2e"),
                 _num(m.get("max_rel"), ".2e"), _num(m.get("cos_min"), ".6f"), _num(m.get("cos_mean"), ".6f"),
                 _num(m.get("sqnr_db"), ".1f"), str(m.get("nan", 0)), str(m.get("inf", 0)),
                 _num(m.get("top1_agreement"), ".4f")] for output, m in parity.metrics.items()]
        if rows:
            lines += ["", *_table(["output", "max abs", "mean abs", "p99 abs", "max rel", "min cos", "mean cos",
                                   "SQNR dB", "NaN", "Inf", "top-1"], rows)]
        lines.append("")
    if result.blame:
        b = result.blame
        lines += [f"Most error added by **{b['step']}** over {b['parent']}: max abs {b['max_abs_added']:.2e} "
                  f"on {b['output']}.", ""]
    return lines


def _accuracy(result: RunResult) -> list[str]:
    if not result.accuracy:
        return []
    rows = [[name, f"{s['accuracy']:.4f}", _num(s.get("agreement"), ".4f"), str(s["examples"])]
            for name, s in result.accuracy.items()]
    return ["## Task accuracy", "", *_table(["model", "accuracy", "agreement with eager", "examples"], rows), ""]


def _flag(row: Mapping[str, Any]) -> str:
    return "not measured" if not row.get("measured", True) else ("unstable" if row.get("unstable") else "")


def _bench(result: RunResult, plots: list[str]) -> list[str]:
    if not result.bench:
        return []
    rows = []
    for target, res in result.bench.items():
        if res.get("error"):
            rows.append([target, "-", "-", "-", "-", "-", "-", "-", "-", "-", f"failed: {res['error']}"])
        for r in res.get("rows", []):
            rows.append([target, str(r["batch"]), str(r["seq"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", f"{r['cv']:.3f}", f"{r['throughput']:.1f}",
                         speedup_cell(ratio_at(result, target, (r["batch"], r["seq"]))), f"{r['peak_rss_mb']:.0f}",
                         _flag(r)])
    grid = [name for name in plots if name in GRID_PLOTS]
    lines = ["## Latency and throughput", "",
             *([" ".join(f"![{name}](plots/{name}.png)" for name in grid), ""] if grid else []),
             *_table(["target", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "CV", "samples/s",
                      "vs eager [95% interval]", "peak RSS MB", "flag"], rows), "",
             *[f"- {line}" for line in ratio_notes(result)], ""]
    extra = []
    for target, res in result.bench.items():
        best, real = res.get("best_batch") or {}, res.get("real_data") or {}
        if not best and not real:
            continue
        extra.append([target, str(best.get("batch", "-")), str(best.get("seq", "-")),
                      _num(best.get("throughput"), ".1f"),
                      str(best.get("stopped_by", "-")), _num(real.get("padded_sentences_per_s"), ".1f"),
                      _num(real.get("sorted_sentences_per_s"), ".1f")])
    if extra:
        lines += ["Best batch size and real-data throughput (the corpus through tokenize and run; sentences/s):", "",
                  *_table(["target", "best batch", "at seq", "samples/s", "search stopped by", "padded to max length",
                           "sorted by length"], extra), ""]
    env = machine(result)
    if env:
        gpu = env.get("gpu") or {}
        lines += [f"Measured on {env['cpu']} ({env['usable_cores']} usable cores), {env['threads']} intra-op threads, "
                  f"device {env['device']}{', ' + gpu.get('name', '') if gpu else ''}; "
                  + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", ""]
    return lines


def _generation(result: RunResult) -> list[str]:
    """Greedy generation: tokens equal to eager's, then time to first token, per-token latency and tokens/s."""
    lines = []
    matches = generation_matches(result)
    if matches:
        rows = [[name, f"{g['matched']}/{g['tokens']} ({g['share']:.2%})", f"{g['sequences_equal']}/{g['sequences']}",
                 _num(g.get("min_share"), ".4f"),
                 f"{p['artifact']:.3f} ({p['increase']:+.2%})" if p else "-",
                 f"+{p['max_increase']:.2%}" if p and p.get("max_increase") is not None else "-"]
                for name, g, p in matches]
        eager_ppl = next((p for _, _, p in matches if p), None)
        lines += ["## Greedy generation and perplexity against eager", "",
                  f"{matches[0][1]['new_tokens']} new tokens per corpus prompt ({matches[0][1]['sequences']} prompts), "
                  "greedy, against eager `generate`; only the tokens a user sees count (up to and including an "
                  "end-of-text token), each sequence up to its first token that differs."
                  + (f" Perplexity on the held-out text ({eager_ppl['tokens']} predicted tokens): eager "
                     f"{eager_ppl['eager']:.3f}." if eager_ppl else ""), "",
                  *_table(["artifact", "tokens equal to eager's", "sequences equal", "gate (share)",
                           "perplexity (vs eager)", "gate (increase)"], rows), ""]
    table = generation_table(result)
    if table:
        rows = [[r["target"], str(r["batch"]), str(r["prompt_tokens"]), str(r["new_tokens"]), f"{r['ttft_p50_ms']:.2f}",
                 f"{r['ttft_p90_ms']:.2f}", f"{r['token_p50_ms']:.2f}", f"{r['token_p90_ms']:.2f}",
                 f"{r['tokens_per_s']:.1f}", _num(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
                 f"{r['cv']:.3f}", r["matched"]] for r in table]
        lines += ["## Generation speed", "",
                  "Greedy generation from prompts of real tokenizer tokens: time to first token (prefill and first "
                  "token), per-token latency (each later step), generated tokens/s (batch x new tokens over the "
                  "median generation).", "",
                  *_table(["target", "batch", "prompt tokens", "new tokens", "TTFT p50 ms", "TTFT p90 ms",
                           "per-token p50 ms", "per-token p90 ms", "tokens/s", "vs eager", "CV", "tokens equal"],
                          rows), ""]
    return lines


def markdown(result: RunResult) -> str:
    """The whole report.md: what ships and why first (with the plot of every candidate), then the summary
    table and the details."""
    recipe, model = result.recipe, result.model
    random = model.spec.weights == "random"
    plots = plot_names(result)
    lines = [f"# {recipe.name}", "", *_what_ships(result, plots),
             *([recipe.description, ""] if recipe.description else []),
             f"Model: `{model.spec.source or model.spec.factory}` ({recipe.task})"
             + (f", **random weights** (seed {model.spec.seed}): parity is real, task quality is not" if random else "")
             + (f", weights from a **GGUF {model.gguf_weights} file**, dequantized to fp32 by transformers: eager "
                f"is that model, quantization error included" if model.gguf_weights else "")
             + ".", "",
             *_summary(result), ""]
    lines += _parity(result) + _generation(result) + _accuracy(result) + _bench(result, plots)
    lines += ["Plots: " + ", ".join(f"[{p}](plots/{p}.png)" for p in plots), ""]
    return "\n".join(line for line in lines if line is not None) + "\n"
