"""Runs a validated chain of steps: cache keys, reuse, atomic step folders, post-conditions, manifests.

The cache key of a step is sha256 over its parent's key, the pass name, the canonical JSON of
its config, any data it reads, and the library versions; so changing one step's config re-runs
that step and the steps after it, and nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifact import Artifact, Format, load_cached
from pipeline.core.disk import check_not_cut_short, disk_full, is_disk_full, require_space
from pipeline.core.errors import PassError, PipelineError, described, first_line
from pipeline.core.progress import stage
from pipeline.core.seal import write_record
from pipeline.core.store import (
    MANIFEST,
    canonical_json,
    file_hashes,
    sha256_file,
    sha256_text,
    staging_folder,
)
from pipeline.core.versions import library_versions
from pipeline.engine.chain import Step
from pipeline.engine.pass_api import Gate, PassContext
from pipeline.engine.postconditions import check_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedStep:
    """A step with its cache key and whether a valid cached artifact exists."""

    step: Step
    key: str
    folder: Path
    cached: bool


def step_key(parent_key: str, step: Step, ctx: PassContext) -> str:
    """Cache key of a step's artifact."""
    instance = step.pass_cls(step.config)
    parts = {"parent": parent_key, "pass": step.pass_cls.name, "config": step.config.cache_config(),
             "data": instance.data_digest(ctx), "versions": library_versions(),
             "io": ctx.io.__dict__ if step.source == "eager" else None,
             # a pass that repairs itself against the gate depends on the reference and the tolerances
             "gate": f"{ctx.gate_digest}:{step.name}" if instance.uses_gate else None}
    return sha256_text(canonical_json(parts))


def plan(steps: list[Step], ctx: PassContext, out_dir: Path) -> list[PlannedStep]:
    """Every step's key and cache state, without running anything."""
    keys = {"eager": ctx.model.source_key}
    planned = []
    for step in steps:
        key = step_key(keys[step.source], step, ctx)
        keys[step.name] = key
        folder = out_dir / step.folder
        planned.append(PlannedStep(step, key, folder, load_cached(folder, key) is not None))
    return planned


def check_steps(steps: list[Step], ctx: PassContext) -> None:
    """Let every pass reject its config against the context before anything runs."""
    for step in steps:
        step.pass_cls(step.config).check(ctx)


def _run_step(planned: PlannedStep, parent: Artifact, ctx: PassContext) -> Artifact:
    step = planned.step
    instance = step.pass_cls(step.config)
    start = time.perf_counter()
    require_space(planned.folder.parent, int(parent.stats.get("bytes", 0)), f"step {step.folder}")
    with staging_folder(planned.folder) as tmp:
        try:
            output = instance.run(parent, ctx, tmp)
        except (KeyboardInterrupt, PipelineError):
            raise
        except Exception as exc:  # any failure inside a pass is that pass's failure
            if is_disk_full(exc):
                raise disk_full(exc, planned.folder.parent, writing=planned.folder) from None
            raise PassError(f"pass {step.pass_cls.name} (step {step.folder}, input {parent.step_folder}) failed: "
                            f"{described(exc)}") from exc
        main = tmp / output.file
        if not main.is_file():
            raise PassError(f"pass {step.pass_cls.name} (step {step.folder}) wrote no {output.file}")
        try:
            check_output(step.pass_cls.produces, main, ctx.io)
        except Exception as exc:  # onnx.checker raises its own exception type
            raise PassError(f"pass {step.pass_cls.name} (step {step.folder}) wrote a model that breaks a "
                            f"post-condition: {first_line(exc)}") from exc
        seconds = time.perf_counter() - start
        files = file_hashes(tmp)
        stats = {**output.stats, "seconds": round(seconds, 3), "bytes": sum((tmp / f).stat().st_size for f in files)}
        manifest: dict[str, Any] = {
            "step": step.folder, "name": step.name, "pass": step.pass_cls.name, "format": step.pass_cls.produces.value,
            "key": planned.key, "file": output.file, "sha256": sha256_file(main), "files": files,
            "parent": parent.step_folder, "parent_key": parent.key, "parent_sha256": parent.sha256,
            "config": step.config.cache_config(), "meta": output.meta, "stats": stats,
            "warnings": output.warnings, "versions": library_versions(), "model": ctx.model.describe(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_record(tmp / MANIFEST, manifest)
        check_not_cut_short(tmp, planned.folder)
    for warning in output.warnings:
        log.warning("%s: %s", step.folder, warning)
    loaded = load_cached(planned.folder, planned.key)
    assert loaded is not None, f"{planned.folder} was just written but does not verify"
    return loaded


def run_chain(planned: list[PlannedStep], ctx: PassContext,
              on_step: Callable[[PlannedStep, Artifact, bool], None] | None = None,
              gate_for: Callable[[Step], Gate] | None = None) -> dict[str, Artifact]:
    """Run (or reuse) every step in order; returns the artifacts by step name, 'eager' included."""
    artifacts = {"eager": Artifact(step_folder="eager", format=Format.EAGER, key=ctx.model.source_key)}
    with stage("build", len(planned)) as advance:
        for item in planned:
            parent = artifacts[item.step.source]
            cached = load_cached(item.folder, item.key)
            if cached is not None:
                advance(f"{item.step.folder} cached ({item.key[:12]})")
                artifacts[item.step.name] = cached
            else:
                advance(f"{item.step.folder}: {item.step.pass_cls.name} on {parent.step_folder}")
                artifacts[item.step.name] = _gated_run(item, parent, ctx, gate_for)
            if on_step is not None:
                on_step(item, artifacts[item.step.name], cached is not None)
    return artifacts


def rebuild_steps(items: list[PlannedStep], artifacts: dict[str, Artifact], ctx: PassContext,
                  gate_for: Callable[[Step], Gate] | None = None) -> dict[str, Artifact]:
    """Run these steps again from their parents, replacing their cached folders."""
    return {item.step.name: _gated_run(item, artifacts[item.step.source], ctx, gate_for) for item in items}


def _gated_run(item: PlannedStep, parent: Artifact, ctx: PassContext,
               gate_for: Callable[[Step], Gate] | None) -> Artifact:
    """Run one step in a context of its own, which carries the step's parity gate (for passes that check
    candidates against eager)."""
    return _run_step(item, parent, dataclasses.replace(ctx, gate=gate_for(item.step) if gate_for else None))
