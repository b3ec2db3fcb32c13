"""The steps of a peers run: gather the targets, check and benchmark each, mark what ships."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks.peer_build import optimum_peers, optimum_source, ort_optimized, ort_quantized, reason
from benchmarks.peer_measure import Settings, bench_compiled, bench_target, parity_in_process, parity_json
from benchmarks.peer_table import Target, p50_at
from benchmarks.quiet import contention, wait_for_quiet
from pipeline.optimize import choose_shipped
from pipeline.reference import Case, reference
from pipeline.results import Prepared, RunResult
from pipeline.runtime import Runner

log = logging.getLogger("benchmarks.peers")


def project_targets(result: RunResult, skip: set[str]) -> list[Target]:
    """Eager, torch.compile and every artifact of the recipe, with the recipe run's parity verdicts."""
    targets = []
    if "eager" not in skip:
        targets.append(Target("eager", "PyTorch", "eager", how="the recipe's eager model"))
    if "compile" not in skip:
        targets.append(Target("torch.compile", "PyTorch", "compile", how="torch.compile(eager model), inductor"))
    if "project" in skip:
        return targets
    for step in result.prepared.steps:
        art = result.artifacts[step.name]
        config = {k: v for k, v in step.config.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
                  .items() if k != "from"}
        how = f"{step.pass_cls.name} {config or ''} from {step.source}".replace("  ", " ")
        parity = result.parity.get(step.name)
        size = art.path.stat().st_size if art.path and art.path.is_file() else None
        targets.append(Target(step.folder, "this project", art.format.value, precision=art.precision, how=how,
                              path=str(art.path) if art.path else None,
                              parity=parity_json(parity) if parity else None, stats={"bytes": size}))
    return targets


def peer_targets(result: RunResult, work: Path, isa: str, skip: set[str], timeout: float
                 ) -> tuple[list[Target], dict[str, str], str | None]:
    """Optimum's and onnxruntime's peers: (targets, Optimum environment versions, quantization preset used)."""
    prepared = result.prepared
    targets: list[Target] = []
    versions: dict[str, str] = {}
    used = None
    if "optimum" not in skip:
        model_dir, why = optimum_source(prepared.ctx.model)
        if model_dir is None:
            targets.append(Target("optimum", "Optimum", "onnx", error=why))
        else:
            found, versions, used = optimum_peers(work / "optimum", model_dir, prepared.recipe.task, isa, timeout)
            targets += found
    if "ort" not in skip:
        plain = next((result.artifacts[s.name] for s in prepared.steps if s.pass_cls.name == "onnx_export"), None)
        if plain is None or plain.path is None:
            why = "the recipe has no onnx_export step to start from"
            targets += [Target("ort-optimize_model", "onnxruntime", "onnx", error=why),
                        Target("ort-quantize_dynamic", "onnxruntime", "onnx", precision="int8", error=why)]
        else:
            targets += [ort_optimized(plain.path, work / "ort_optimize_model"),
                        ort_quantized(plain.path, work / "ort_quantize_dynamic")]
    return targets, versions, used


def measure(result: RunResult, targets: list[Target], settings: Settings, timeout: float) -> None:
    """Parity here for every target without a verdict, then every benchmark in its own process."""
    prepared = result.prepared
    recipe = prepared.recipe
    cases = reference(recipe, prepared.ctx.model, prepared.out_dir / "reference", prepared.ctx.base_dir, recipe.device)
    runner = Runner(prepared.ctx.model, recipe.device, threads=recipe.bench.threads)
    for t in targets:
        if t.parity is None and t.error is None and t.kind in ("eager", "onnx"):
            log.info("parity: %s on %d reference cases", t.name, len(cases))
            parity_in_process(prepared, runner, t, cases)
    gc.collect()  # close this process's sessions: their spinning threads must not share the cores with a worker
    time.sleep(2)
    runnable = [t for t in targets if t.error is None]
    for i, t in enumerate(runnable, 1):
        log.info("bench %d/%d: %s (own process)", i, len(runnable), t.name)
        start = time.perf_counter()
        bench_one(prepared, t, cases, settings, timeout)
        log.info("bench %s: %.0f s", t.name, time.perf_counter() - start)


def bench_one(prepared: Prepared, t: Target, cases: list[Case], settings: Settings, timeout: float) -> None:
    """Wait for a quiet machine, then benchmark one target, noting how busy other processes kept the cores."""
    t.stats["others_cpu_share_before"] = wait_for_quiet(settings.quiet_threshold, settings.quiet_wait)
    try:
        with contention(t.stats):
            if t.kind == "compile":
                bench_compiled(prepared, t, cases, settings, timeout)
            else:
                bench_target(prepared, t, settings, timeout)
    except Exception as exc:  # one target's failure is a row of the table, not the end of the run
        log.warning("bench %s failed: %s", t.name, reason(exc))
        t.error = f"benchmark: {reason(exc)}"
    if t.stats["others_cpu_share"] > settings.quiet_threshold:
        log.warning("bench %s: other processes used %.0f%% of the cores meanwhile; its numbers are suspect",
                    t.name, 100 * t.stats["others_cpu_share"])


def drift_lines(first: Target | None, again: dict[str, Any] | None, settings: Settings) -> list[str]:
    """Eager measured first and again last: how far its p50 moved over the run."""
    if first is None or not again or again.get("error"):
        return []
    parts = []
    for b in settings.batches:
        for s in settings.seqs:
            before, after = p50_at(first.bench, (b, s)), p50_at(again, (b, s))
            if before and after:
                parts.append(f"b{b} s{s} {before:.2f} -> {after:.2f} ms ({(after - before) / before:+.1%})")
    return [f"Drift check: eager p50 measured first and again last: {'; '.join(parts)}.", ""] if parts else []


def mark_shipped(result: RunResult, targets: list[Target]) -> tuple[str | None, list[str]]:
    """Mark the artifact the recipe's ship rule picks with this run's measurements; (its name, notes).

    The rule (``ship.fastest_at``, ``ship.step`` or the last passing step) and the parity verdicts are
    the recipe's; only the benchmark is this run's, so a ship point the recipe's own cached benchmarks
    lack (the recipe run then ships its last passing step) still gets the rule's answer here.
    """
    by_folder = {t.name: t for t in targets}
    bench = {s.name: by_folder[s.folder].bench or {} for s in result.prepared.steps if s.folder in by_folder}
    chosen = choose_shipped(result.prepared, result.parity, bench)
    folder = next((s.folder for s in result.prepared.steps if s.name == chosen), None)
    for t in targets:
        t.shipped = t.name == folder
    notes = []
    if chosen != result.shipped:
        notes.append(f"The recipe run shipped {result.shipped} to its bundle (its own benchmarks were not cached for "
                     f"this code and recipe); its ship rule, given this run's measurements, picks {chosen}, the "
                     "artifact compared here as shipped.")
    return folder, notes
