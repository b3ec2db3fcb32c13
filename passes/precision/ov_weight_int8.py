"""OpenVINO IR (fp32) -> IR with int8 MatMul weights and activations quantized per group of each row at run time.

``nncf.compress_weights`` (INT8_ASYM) stores the MatMuls' constant weights in int8; the CPU plugin quantizes
the activations feeding them dynamically, one scale per ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` channels of each
row, so a sentence gives the same output alone and in a padded batch. The group size is written into the IR's
runtime options (passes._support.ov_weights), which ``compile_model`` applies by itself.

The group size is chosen by measurement: each of ``group_sizes`` is built and, in a recipe run, checked with
the step's parity gate; among those that pass, the fastest at batch 1, sequence 128 (interleaved rounds,
medians) is kept. Outside a recipe run (no gate) the first is taken. With ``repair: true``, when none passes,
the most harmful MatMuls keep float weights (passes.repair), at the group size that came closest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydantic import Field, field_validator

from passes._support.ov_weights import (
    GROUP_SIZES,
    compress_int8,
    compressed_matmuls,
    fp32_ir,
    require_nncf,
    runtime_options,
    set_group_size,
)
from passes.export.openvino_convert import require_openvino
from passes.repair.options import RepairingPass, RepairOptions, convert_with_repair
from passes.repair.strategies import ForwardSelection
from pipeline.core.artifact import Artifact, Format, Precision
from pipeline.engine.pass_api import Gate, Inputs, PassContext, PassOutput
from pipeline.runtime.backends import OvBackend

log = logging.getLogger(__name__)

FILE = "model.xml"
PRECISION = "int8"
WARMUP_CALLS = 5
ROUNDS = 8  # interleaved, in an order rotated each round, so a slow stretch of the machine hits every candidate
CALLS_PER_ROUND = 10


class OvWeightInt8Config(RepairOptions):
    """Options of the weight-int8 conversion and of its choice of group size."""

    group_sizes: list[int] = Field(
        default_factory=lambda: list(GROUP_SIZES), min_length=1,
        description="DYNAMIC_QUANTIZATION_GROUP_SIZE values to try (channels per activation scale). In a recipe "
                    "run the fastest that passes the gate is kept; outside one, the first.",
    )

    @field_validator("group_sizes")
    @classmethod
    def _distinct_and_positive(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("every group size must be at least 1")
        if len(set(value)) != len(value):
            raise ValueError("group sizes must differ")
        return value


class OvWeightInt8Pass(RepairingPass):
    """Give an fp32 IR's MatMuls int8 weights and per-group dynamic activation quantization."""

    name = "ov_weight_int8"
    consumes = frozenset({Format.OPENVINO})
    produces = Format.OPENVINO
    Config = OvWeightInt8Config

    @property
    def uses_gate(self) -> bool:
        """The gate decides among several group sizes, and drives a repair."""
        config = cast(OvWeightInt8Config, self.config)
        return config.repair or len(config.group_sizes) > 1

    def check(self, ctx: PassContext) -> None:
        """OpenVINO and NNCF must be installed."""
        require_openvino(self.name)
        require_nncf(self.name)

    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write the IR to ``out_dir/model.xml`` (weights in model.bin), its group size in its runtime options."""
        import openvino as ov

        config = cast(OvWeightInt8Config, self.config)
        source = fp32_ir(parent, self.name)
        compressed = compress_int8(ov.Core().read_model(str(source)))
        candidates = {name: "MatMul" for name in compressed_matmuls(compressed)}
        if not candidates:
            raise ValueError(f"{source.name}: no MatMul with constant weights to compress")
        warnings: list[str] = []
        with tempfile.TemporaryDirectory(prefix="ov-weight-int8-") as scratch:
            builds = {size: save(compressed, size, Path(scratch) / str(size) / FILE) for size in config.group_sizes}
            group, choice = choose_group(builds, ctx)
            repaired: dict[str, Any] = {}
            if choice["passed"] is not False or not config.repair:
                copy_build(builds[group], out_dir)
                if choice["passed"] is False:
                    warnings.append(f"no group size passes the gate (best min cosine "
                                    f"{choice['by_size'][str(group)]['cos_min']:.5f}, group size {group}); "
                                    f"repair: true keeps the most harmful MatMuls in float")
            else:
                def build(target: Path, kept: list[str]) -> None:
                    names = [name for name in candidates if name not in set(kept)]
                    save(compress_int8(ov.Core().read_model(str(source)), names), group, target)

                repaired, warnings = convert_with_repair(ctx, source, out_dir, PRECISION, build, candidates, config,
                                                         ForwardSelection(), fmt=Format.OPENVINO)
        written = ov.Core().read_model(str(out_dir / FILE))
        stats = {**repaired, **matmul_counts(written, len(candidates)), "group_size": group, "choice": choice}
        log.info("ov_weight_int8: %d of %d MatMuls with int8 weights, group size %d (%s)",
                 stats["matmuls_compressed"], len(candidates), group, choice["why"])
        meta = {"precision": Precision.INT8, "runtime_options": runtime_options(written), "weights": "int8_asym"}
        return PassOutput(file=FILE, meta=meta, stats=stats, warnings=warnings)


def save(model: Any, group: int, target: Path) -> Path:
    """Save ``model`` (weights as they are) to ``target`` with ``group`` as its group size; returns ``target``."""
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    set_group_size(model, group)
    ov.save_model(model, str(target), compress_to_fp16=False)
    return target


def copy_build(path: Path, out_dir: Path) -> None:
    """Copy an IR (its .xml and the .bin beside it) into ``out_dir``."""
    for name in (path.name, path.with_suffix(".bin").name):
        shutil.copy2(path.parent / name, out_dir / name)


def choose_group(builds: dict[int, Path], ctx: PassContext) -> tuple[int, dict[str, Any]]:
    """The group size to keep, and the choice: each size's verdict and timing by size, and why."""
    sizes = list(builds)
    if ctx.gate is None:
        return sizes[0], {"why": "the first group size (no parity gate outside a recipe run)", "passed": None}
    trials = judge(builds, ctx.gate)
    passing = [size for size in sizes if trials[str(size)]["passed"]]
    choice: dict[str, Any] = {"by_size": trials, "passed": bool(passing)}
    if len(passing) > 1:
        inputs = timing_inputs(ctx)
        timings = time_builds({size: builds[size] for size in passing}, inputs)
        for size, timing in timings.items():
            trials[size].update(timing)
        group = min(passing, key=lambda size: timings[str(size)]["p50_ms"])
        choice.update(why=f"the fastest of the {len(passing)} that pass the gate",
                      timed_at={"batch": 1, "seq": int(next(iter(inputs.values())).shape[1]), "rounds": ROUNDS,
                                "calls_per_round": CALLS_PER_ROUND})
    elif passing:
        group = passing[0]
        choice["why"] = "the only group size that passes the gate"
    else:
        group = max(sizes, key=lambda size: trials[str(size)]["cos_min"])
        choice["why"] = "none passes the gate; the closest"
    return group, choice


def judge(builds: dict[int, Path], gate: Gate) -> dict[str, dict[str, Any]]:
    """Each build's gate verdict, by group size."""
    verdicts = {}
    for size, path in builds.items():
        verdict = gate(path, PRECISION)
        verdicts[str(size)] = {"passed": verdict.passed, "cos_min": verdict.cos_min, "failures": verdict.failures[:1]}
        log.info("ov_weight_int8: group size %d, min cosine %.5f, %s", size, verdict.cos_min,
                 "passes" if verdict.passed else "fails")
    return verdicts


def timing_inputs(ctx: PassContext) -> Inputs:
    """Inputs at the representative shape: batch 1, sequence min(128, the model's longest)."""
    seq = min(128, getattr(ctx.model, "max_positions", None) or 128)
    return ctx.sample_inputs(1, seq)


def time_builds(builds: dict[int, Path], inputs: Inputs, rounds: int = ROUNDS,
                calls: int = CALLS_PER_ROUND) -> dict[str, dict[str, float]]:
    """Latency of each build on ``inputs``: warmed up, then ``rounds`` interleaved rounds of ``calls`` timed
    calls each (time.perf_counter), the order rotated each round; median and 90th percentile per build, ms."""
    backends = {size: OvBackend(path, "cpu", None) for size, path in builds.items()}
    staged = {size: backend.stage(inputs) for size, backend in backends.items()}
    for call in staged.values():
        for _ in range(WARMUP_CALLS):
            call()
    times: dict[int, list[float]] = {size: [] for size in staged}
    order = list(staged)
    for round_ in range(rounds):
        for size in order[round_ % len(order):] + order[:round_ % len(order)]:
            call = staged[size]
            for _ in range(calls):
                start = time.perf_counter()
                call()
                times[size].append((time.perf_counter() - start) * 1e3)
    return {str(size): {"p50_ms": round(float(np.median(ms)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
                        "calls": len(ms)} for size, ms in times.items()}


def matmul_counts(model: Any, candidates: int) -> dict[str, int]:
    """MatMuls with int8 weights, MatMuls with constant weights left in float, and MatMuls of two activations."""
    matmuls = sum(op.get_type_name() == "MatMul" for op in model.get_ordered_ops())
    compressed = len(compressed_matmuls(model))
    return {"matmuls_compressed": compressed, "matmuls_float": candidates - compressed,
            "matmuls_activation": matmuls - candidates}
