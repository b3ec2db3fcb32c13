"""What a run carries from stage to stage: the prepared recipe, and everything it produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.artifact import Artifact
from pipeline.engine.manager import PlannedStep
from pipeline.engine.pass_api import PassContext
from pipeline.recipe.load import Recipe, Step
from pipeline.verify.parity import Parity


@dataclass
class Prepared:
    """A recipe validated in full, with its context and plan; nothing written yet."""

    recipe: Recipe
    steps: list[Step]
    ctx: PassContext
    planned: list[PlannedStep]
    out_dir: Path


@dataclass
class RunResult:
    """What a run produced: artifacts, parity verdicts, the shipped step, and the report dict."""

    prepared: Prepared
    artifacts: dict[str, Artifact]
    parity: dict[str, Parity] = field(default_factory=dict)
    shipped: str | None = None
    cached: dict[str, bool] = field(default_factory=dict)
    blame: dict[str, Any] | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)  # interleaved, over eager (pipeline.bench.rounds)
    ship_note: str | None = None  # why the ship rule picked what it did, when it was not plain
    bundle: Path | None = None
    rebuilt: list[str] = field(default_factory=list)  # cached steps rebuilt because they failed where they passed
