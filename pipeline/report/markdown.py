"""report.md: one summary table a person reads at a glance, then the details."""

from __future__ import annotations

from pipeline.report.outcome import RunResult
from pipeline.report.summary import (
    generation_matches,
    generation_table,
    machine,
    ratio_at,
    ratio_notes,
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


def _summary(result: RunResult) -> list[str]:
    point = summary_point(result)
    at = f"b{point[0]} s{point[1]}" if point else "-"
    rows = []
    for r in summary_rows(result):
        name = f"**{r['step']}** (shipped)" if r["shipped"] else r["step"]
        rows.append([name, r["format"], r["precision"], size_text(r["bytes"]), r["verdict"],
                     _num(r["max_abs"], ".2e"), _num(r["cos_min"], ".6f"), _num(r["batch_cos_min"], ".6f"),
                     _num(r["p50_ms"], ".2f"), _num(r["best_throughput"], ".1f"), r["speedup_cell"]])
    header = ["artifact", "format", "precision", "size", "parity", "max abs err vs eager", "min cosine",
              "batch invariance (min cosine, alone vs padded)", f"p50 ms ({at})", "best samples/s",
              f"speed-up over eager ({at}) [95% interval]"]
    return _table(header, rows)


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


def _bench(result: RunResult) -> list[str]:
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
                         "unstable" if r.get("unstable") else ""])
    lines = ["## Latency and throughput", "",
             *_table(["target", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "CV", "samples/s",
                      "vs eager [95% interval]", "peak RSS MB", "flag"], rows), "",
             *[f"- {line}" for line in ratio_notes(result)], ""]
    extra = []
    for target, res in result.bench.items():
        best, real = res.get("best_batch") or {}, res.get("real_data") or {}
        if not best and not real:
            continue
        extra.append([target, str(best.get("batch", "-")), _num(best.get("throughput"), ".1f"),
                      str(best.get("stopped_by", "-")), _num(real.get("padded_sentences_per_s"), ".1f"),
                      _num(real.get("sorted_sentences_per_s"), ".1f")])
    if extra:
        lines += ["Best batch size and real-data throughput (the corpus through tokenize and run; sentences/s):", "",
                  *_table(["target", "best batch", "samples/s", "search stopped by", "padded to max length",
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
        rows = [[name, f"{g['matched']}/{g['tokens']}", f"{g['sequences_equal']}/{g['sequences']}",
                 _num(g.get("min_share"), ".4f")] for name, g in matches]
        lines += ["## Greedy generation against eager `generate`", "",
                  f"{matches[0][1]['new_tokens']} new tokens per corpus prompt; a sequence counts up to its first "
                  "token that differs.", "",
                  *_table(["artifact", "tokens equal to eager's", "sequences equal", "gate (share)"], rows), ""]
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
    """The whole report.md."""
    recipe, model = result.recipe, result.model
    random = model.spec.weights == "random"
    lines = [f"# {recipe.name}", "", recipe.description, "",
             f"Model: `{model.spec.source or model.spec.factory}` ({recipe.task})"
             + (f", **random weights** (seed {model.spec.seed}): parity is real, task quality is not" if random else "")
             + ".", "",
             f"Shipped: **{result.shipped}** (bundle `ship/`)." if result.shipped
             else "**Nothing shipped: no artifact the recipe may ship passed the parity gate.**", "",
             *([result.ship_note, ""] if result.ship_note else []),
             *_summary(result), ""]
    plots = ["latency_vs_batch", "throughput_vs_seq", "speedup", "parity_error", "memory"]
    if result.bench:
        lines += ["![latency](plots/latency_vs_batch.png) ![throughput](plots/throughput_vs_seq.png)", ""]
    lines += _parity(result) + _generation(result) + _accuracy(result) + _bench(result)
    lines += ["Plots: " + ", ".join(f"[{p}](plots/{p}.png)" for p in plots), ""]
    return "\n".join(line for line in lines if line is not None) + "\n"
