"""Parity and benchmarks of every target, with the project's own metrics and benchmark workers.

Parity runs in this process on the recipe's reference cases (onnxruntime through
``pipeline.runtime.runner``); every target's benchmark runs in its own long-lived process, all of them in
the project's interleaved rounds: ``pipeline.bench.worker`` for eager, TorchScript and any ONNX
file, ``benchmarks.compile_worker`` for ``torch.compile``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer_build import ROOT, reason
from benchmarks.peer_table import Target
from pipeline.bench.orchestrate import available_memory_mb, worker_spec
from pipeline.bench.pool import Launch
from pipeline.core.artifact import Artifact, Format
from pipeline.run.prepare import Prepared
from pipeline.runtime.runner import Outputs, Runner
from pipeline.verify.cases import Case
from pipeline.verify.parity import check, run_cases

log = logging.getLogger("benchmarks.peers")
QUICK = {"warmup": 1, "warmup_seconds": 0.05, "min_repeats": 3, "min_seconds": 0.1, "max_seconds": 1.0,
         "throughput_seconds": 0.2}


@dataclass(frozen=True)
class Settings:
    """The peers run's grid; the protocol is the recipe's unless ``quick`` (development only)."""

    batches: tuple[int, ...] = (1, 8)
    seqs: tuple[int, ...] = (128,)
    best_seq: int = 128
    max_batch: int = 32
    real_data: bool = False
    quick: bool = False
    quiet_threshold: float = 0.10  # share of the cores other processes may use before a target waits
    quiet_wait: float = 120.0  # seconds a target waits at most for them
    point: tuple[int, int] = (1, 128)  # the ship point: measured in bench.ship_point_rounds


def parity_json(parity: Any) -> dict[str, Any]:
    """The parts of a pipeline.verify.parity.Parity the peers report keeps."""
    return {"passed": parity.passed, "metrics": parity.metrics, "tolerance": parity.tolerance,
            "failures": parity.failures}


def judge(prepared: Prepared, target: Target, cases: list[Case], outputs: list[Outputs]) -> dict[str, Any]:
    """check() against eager with the recipe's tolerance for the target's precision."""
    verify = prepared.recipe.verify
    parity = check(cases, outputs, None, lambda output: verify.tolerance_for(target.name, target.precision, output),
                   prepared.recipe.task == "text-classification")
    return parity_json(parity)


def parity_in_process(prepared: Prepared, runner: Runner, target: Target, cases: list[Case]) -> None:
    """Run an ONNX file or the eager model on every reference case here, and judge it."""
    try:
        if target.kind == "eager":
            fn = runner.open_eager()
        else:
            fn = runner.open(Artifact(step_folder=target.name, format=Format(target.kind), key=target.name,
                                      path=Path(target.path or "")))
    except Exception as exc:  # cannot open: the reason goes in the table
        target.error = f"does not load: {reason(exc)}"
        return
    outputs, errors = run_cases(fn, cases)
    if errors:
        target.parity = {"passed": False, "metrics": {}, "tolerance": {}, "failures": errors}
        return
    target.parity = judge(prepared, target, cases, outputs)


def peer_spec(prepared: Prepared, target: Target, settings: Settings) -> dict[str, Any]:
    """The project's worker spec for a target, with the peers run's grid and best-batch search."""
    fmt = Format.EAGER if target.kind in ("eager", "compile") else Format(target.kind)
    artifact = Artifact(step_folder=target.name, format=fmt, key=target.name,
                        path=Path(target.path) if target.path else None)
    spec = worker_spec(prepared.recipe, prepared.model, target.name, artifact)
    spec["grid"] = [[b, s] for b in settings.batches for s in settings.seqs]
    if settings.max_batch > 0:
        search = spec.get("best_batch") or {"plateau": 0.05, "memory_limit_mb": 0.6 * available_memory_mb()}
        spec["best_batch"] = {**search, "seq": settings.best_seq, "max_batch": settings.max_batch}
    else:
        spec.pop("best_batch", None)
    if not settings.real_data:
        spec.pop("real_data", None)
    if settings.quick:
        spec["protocol"] = {**spec["protocol"], **QUICK}
    return spec


def save_case_inputs(cases: list[Case], path: Path) -> None:
    """The reference cases' inputs as ``<case>/<input>`` arrays, for a worker in another process."""
    np.savez(path, **{f"{c.name}/{k}": v for c in cases for k, v in c.inputs.items()})


def load_case_outputs(cases: list[Case], path: Path) -> list[Outputs]:
    """Outputs a worker saved as ``<case>/<output>``, in the cases' order."""
    with np.load(path, allow_pickle=False) as data:
        return [{k.split("/", 1)[1]: data[k] for k in data.files if k.split("/", 1)[0] == c.name} for c in cases]


def launch(prepared: Prepared, target: Target, cases: list[Case], settings: Settings, scratch: Path) -> Launch:
    """How to start the target's worker. ``torch.compile`` runs ``benchmarks.compile_worker`` from the
    repository root, with an empty inductor cache (a first compile's time, not a cache hit's), and
    runs the reference cases' inputs there for its parity."""
    spec = peer_spec(prepared, target, settings)
    if target.kind != "compile":
        return Launch(target.name, spec)
    spec.update(parity_inputs=str(scratch / "inputs.npz"), parity_outputs=str(scratch / "outputs.npz"))
    save_case_inputs(cases, Path(spec["parity_inputs"]))
    return Launch(target.name, spec, module="benchmarks.compile_worker", cwd=ROOT,
                  extra_env=lambda tmp: {"PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")})


def judge_compiled(prepared: Prepared, target: Target, cases: list[Case], outputs: Path) -> None:
    """torch.compile's parity, from the outputs its worker saved on the reference cases."""
    target.stats["seconds"] = (target.bench or {}).get("compile_seconds")
    target.parity = judge(prepared, target, cases, load_case_outputs(cases, outputs))
