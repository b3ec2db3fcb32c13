"""The steps of a peers run: gather the targets, check and benchmark each, mark what ships."""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.peer_build import (
    intel_peers,
    nncf_quantized,
    olive_peers,
    optimum_peers,
    optimum_source,
    ort_optimized,
    ort_quantized,
)
from benchmarks.peer_measure import QUICK, Settings, judge_compiled, launch, parity_in_process, parity_json
from benchmarks.peer_table import Target
from benchmarks.quiet import contention, wait_for_quiet
from pipeline.bench.orchestrate import measure_session, round_plans
from pipeline.report.outcome import RunResult
from pipeline.run.prepare import Prepared
from pipeline.runtime.runner import Runner
from pipeline.ship.rule import choose_shipped
from pipeline.verify.reference import reference

log = logging.getLogger("benchmarks.peers")
NNCF_SAMPLES = 64  # as the recipe's nncf_int8


def project_targets(result: RunResult, skip: set[str]) -> list[Target]:
    """Eager, torch.compile and every artifact of the recipe, with the recipe run's parity verdicts."""
    targets = []
    if "eager" not in skip:
        targets.append(Target("eager", "PyTorch", "eager", how="the recipe's eager model"))
    if "compile" not in skip:
        targets.append(Target("torch.compile", "PyTorch", "compile", how="torch.compile(eager model), inductor"))
    if "project" in skip:
        return targets
    for step in result.steps:
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


def peer_targets(prepared: Prepared, result: RunResult, work: Path, isa: str, skip: set[str], timeout: float
                 ) -> tuple[list[Target], dict[str, dict[str, str]], str | None]:
    """Optimum's, optimum-intel's, Olive's, onnxruntime's and NNCF's peers: (targets, the versions of each peer
    environment by report key, Optimum's quantization preset used)."""
    targets: list[Target] = []
    versions: dict[str, dict[str, str]] = {}
    used = None
    model_dir, why = optimum_source(prepared.ctx.model)
    if "optimum" not in skip:
        if model_dir is None:
            targets.append(Target("optimum", "Optimum", "onnx", error=why))
        else:
            found, versions["optimum_versions"], used = optimum_peers(work / "optimum", model_dir,
                                                                      prepared.recipe.task, isa, timeout)
            targets += found
    if "intel" not in skip:
        if model_dir is None or prepared.recipe.task != "feature-extraction":
            targets.append(Target("optimum-intel", "optimum-intel", "openvino",
                                  error=why or f"benchmarks/intel_peers.py builds feature-extraction models, "
                                               f"not {prepared.recipe.task}"))
        else:
            corpus = prepared.ctx.sentence_file(None)
            found, versions["intel_versions"] = intel_peers(work / "intel", model_dir, corpus, NNCF_SAMPLES, timeout)
            targets += found
    if "olive" not in skip:
        if model_dir is None:
            targets.append(Target("olive", "Olive", "onnx", error=why))
        else:
            found, versions["olive_versions"] = olive_peers(work / "olive", model_dir, prepared.recipe.task, timeout)
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
    if "nncf" not in skip:
        targets.append(nncf_peer(prepared, result, work / "nncf_quantize"))
    return targets, versions, used


def nncf_peer(prepared: Prepared, result: RunResult, out: Path) -> Target:
    """NNCF's int8 with its defaults on the recipe's fp32 OpenVINO IR, calibrated on the recipe's corpus."""
    ir = next((result.artifacts[s.name] for s in prepared.steps if s.pass_cls.name == "openvino_convert"), None)
    if ir is None or ir.path is None:
        return Target("nncf-quantize", "NNCF", "openvino", precision="int8",
                      error="the recipe has no openvino_convert step to start from")
    names = prepared.ctx.model.input_names
    samples = [{name: batch[name] for name in names}
               for batch in prepared.ctx.calibration_inputs(prepared.ctx.sentence_file(None), NNCF_SAMPLES, 1)]
    return nncf_quantized(ir.path, out, samples)


def measure(prepared: Prepared, targets: list[Target], settings: Settings, timeout: float) -> list[dict[str, Any]]:
    """Parity here for every target without a verdict, then one interleaved benchmark session of every
    target that loads, each in its own process; returns the session's ratios over eager."""
    recipe = prepared.recipe
    cases = reference(recipe, prepared.ctx.model, prepared.out_dir / "reference", prepared.ctx.base_dir, recipe.device)
    runner = Runner(prepared.ctx.model, recipe.device, threads=recipe.bench.threads)
    for t in targets:
        if t.parity is None and t.error is None and t.kind != "compile":
            log.info("parity: %s on %d reference cases", t.name, len(cases))
            parity_in_process(prepared, runner, t, cases)
    gc.collect()  # close this process's sessions: their spinning threads must not share the cores with a worker
    time.sleep(2)
    runnable = [t for t in targets if t.error is None]
    quick = {**QUICK, "rounds": 3, "ship_point_rounds": 3}
    bench = recipe.bench.model_copy(update=quick) if settings.quick else recipe.bench
    plans = round_plans(bench, recipe.device, settings.point,
                        [(b, s) for b in settings.batches for s in settings.seqs])
    load: dict[str, float] = {"others_cpu_share_before": wait_for_quiet(settings.quiet_threshold, settings.quiet_wait)}
    with tempfile.TemporaryDirectory(prefix="peers-") as scratch:
        launches = [launch(prepared, t, cases, settings, Path(scratch)) for t in runnable]
        log.info("bench: %d targets in interleaved rounds, each in its own process", len(launches))
        with contention(load):
            session = measure_session(launches, plans, timeout)
        for t in runnable:
            t.bench = session.results.get(t.name)
            t.stats.update(load)
            if (t.bench or {}).get("error"):
                t.error = f"benchmark: {t.bench['error']}"
                log.warning("bench %s failed: %s", t.name, t.error)
            elif t.kind == "compile":
                judge_compiled(prepared, t, cases, Path(scratch) / "outputs.npz")
    if load["others_cpu_share"] > settings.quiet_threshold:
        log.warning("other processes used %.0f%% of the cores during the benchmark", 100 * load["others_cpu_share"])
    return session.ratios


def drift_lines(eager: Target | None) -> list[str]:
    """How far eager's median latency moved from its first round to its last at each point: drift the
    interleaved ratios cancel, shown so that a reader sees how much there was."""
    parts = []
    for row in (eager.bench or {}).get("rows", []) if eager else []:
        first, last = row["round_p50_ms"][0], row["round_p50_ms"][-1]
        parts.append(f"b{row['batch']} s{row['seq']} {first:.2f} -> {last:.2f} ms ({(last - first) / first:+.1%})")
    return [f"Drift check: eager's median latency in its first and its last round at each point: "
            f"{'; '.join(parts)}. Ratios are taken within a round, so this drift does not enter them.", ""
            ] if parts else []


def mark_shipped(result: RunResult, targets: list[Target], ratios: list[dict[str, Any]]
                 ) -> tuple[str | None, list[str]]:
    """Mark the artifact the recipe's ship rule picks with this run's measurements; (its name, notes).

    The rule (``ship.fastest_at``, ``ship.step`` or the last passing step) and the parity verdicts are
    the recipe's; only the benchmark is this run's, so a ship point the recipe's own cached benchmarks
    lack (the recipe run then ships its last passing step) still gets the rule's answer here.
    """
    by_folder = {t.name: t for t in targets}
    bench = {s.name: by_folder[s.folder].bench or {} for s in result.steps if s.folder in by_folder}
    names = {s.folder: s.name for s in result.steps}
    by_step = [{**e, "target": names[e["target"]]} for e in ratios if e["target"] in names]
    chosen, why = choose_shipped(result.recipe.ship, [s.name for s in result.steps], result.parity, bench, by_step)
    folder = next((s.folder for s in result.steps if s.name == chosen), None)
    for t in targets:
        t.shipped = t.name == folder
    notes = [why] if why else []
    if chosen != result.shipped:
        notes.append(f"The recipe run shipped {result.shipped} to its bundle (its own benchmarks were not cached for "
                     f"this code and recipe); its ship rule, given this run's measurements, picks {chosen}, the "
                     "artifact compared here as shipped.")
    return folder, notes
