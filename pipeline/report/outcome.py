"""What a run produced, as the reports read it: the recipe and its steps, every artifact, each stage's typed
result (parity, benchmarks, ratios, blame, accuracy), and what shipped. The run layer (pipeline.run) fills it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.bench.spec import BenchResult, Ratio
from pipeline.core.artifact import Artifact
from pipeline.engine.chain import Step
from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import Recipe
from pipeline.verify.accuracy import AccuracyScore
from pipeline.verify.parity import Blame, Parity


@dataclass
class RunResult:
    """What a run produced: artifacts, parity verdicts, benchmarks, the shipped step and its bundle."""

    recipe: Recipe
    steps: list[Step]
    model: ModelHandle
    out_dir: Path
    artifacts: dict[str, Artifact]
    parity: dict[str, Parity] = field(default_factory=dict)
    shipped: str | None = None
    cached: dict[str, bool] = field(default_factory=dict)
    blame: Blame | None = None
    accuracy: dict[str, AccuracyScore] = field(default_factory=dict)
    bench: dict[str, BenchResult] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)  # interleaved, over eager (pipeline.bench.rounds)
    unmeasured: list[Ratio] = field(default_factory=list)  # ratios at points that could not be measured
    ship_note: str | None = None  # why the ship rule picked what it did, when it was not plain
    bundle: Path | None = None
    rebuilt: list[str] = field(default_factory=list)  # cached steps rebuilt because they failed where they passed
