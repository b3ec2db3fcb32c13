"""The run's own record of a bundle chosen by measurement, so that a run that measured nothing where the
recipe chooses by measurement (``optimize --no-bench``, ``make peers`` with a benchmark it cannot reuse,
``verify``) keeps that bundle instead of replacing it with the rule's fallback. Sealed like every record
a run reads back: an edited one is ignored."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.bench.orchestrate import ship_point
from pipeline.core.seal import read_record, write_record
from pipeline.core.store import MANIFEST, json_safe, read_json
from pipeline.report.outcome import RunResult
from pipeline.ship.bundle import SHIP_DIR, bench_summary, check_bundle, parity_summary
from pipeline.ship.rule import may_ship

log = logging.getLogger(__name__)

SHIPPED = ".shipped.json"


def remember_measured_choice(out_dir: Path, step: str, key: str, point: tuple[int, int]) -> None:
    """Keep that ``step`` (its artifact's cache ``key``) shipped because it was fastest, measured, at ``point``."""
    write_record(out_dir / SHIPPED, {"step": step, "key": key, "point": list(point)})


def measured_choice(out_dir: Path, point: tuple[int, int]) -> dict[str, Any] | None:
    """The last choice by measurement at ``point`` ({"step", "key", "point"}), or None."""
    record = read_record(out_dir / SHIPPED, "record of the shipped step")
    if record is None or not isinstance(record.get("step"), str) or not isinstance(record.get("key"), str) \
            or record.get("point") != list(point):
        return None
    return record


def keep_a_measured_choice(result: RunResult) -> bool:
    """Where the recipe ships the fastest step at a point: remember a choice this run measured there; when
    this run measured no ratio there, ship the step chosen there by measurement before instead, if its
    artifact is the same and passes its gate now. True when that earlier choice ships."""
    point = ship_point(result.recipe)
    if point is None:
        return False
    record = measured_choice(result.out_dir, point)  # read first: an edited record is said, whatever comes next
    measured = {e["target"] for e in result.ratios if (e["batch"], e["seq"]) == point}
    if result.shipped in measured:
        remember_measured_choice(result.out_dir, result.shipped, result.artifacts[result.shipped].key, point)
        return False
    step = record["step"] if record is not None else None
    if record is None or step is None or step not in result.artifacts or not may_ship(result.parity, step) \
            or result.artifacts[step].key != record["key"]:
        return False
    if step != result.shipped:
        note = (f"ship.fastest_at b{point[0]} s{point[1]}: this run measured no ratio there; {step}, chosen there "
                f"by measurement before (the same artifact, passing its gate now), stays shipped"
                f"{f' rather than {result.shipped}' if result.shipped else ''}")
        log.warning("%s", note)
        result.shipped, result.ship_note = step, note
    return True


def bundle_in_place(result: RunResult, same_summaries: bool) -> bool:
    """Whether the folder's bundle is intact and holds the shipped step's artifact (its model file's bytes);
    with ``same_summaries``, also under that step's name with the parity verdict and benchmark this run would
    write into it (a run that re-used everything). The cheap checks come first, hashing the files last."""
    name, bundle = result.shipped, result.out_dir / SHIP_DIR
    manifest = read_json(bundle / MANIFEST)
    lineage = manifest.get("lineage") if manifest else None
    if name is None or manifest is None or not isinstance(lineage, list) or not lineage \
            or not isinstance(lineage[-1], dict) or lineage[-1].get("sha256") != result.artifacts[name].sha256:
        return False
    if same_summaries:
        now = json.loads(json.dumps(json_safe({"name": name, "parity": parity_summary(result.parity.get(name)),
                                               "bench": bench_summary(result, name)})))
        if any(manifest.get(key) != value for key, value in now.items()):
            return False
    return check_bundle(bundle) == []
