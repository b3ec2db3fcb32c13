"""The Pass protocol, its typed config and the context a pass runs in. Imports no torch, so that
listing passes and printing the recipe schema stay fast.

A pass implements one method, ``run``: read the parent artifact, write new file(s) into the
empty folder it is given, and return a PassOutput. The manager does everything around it:
cache keys, atomic folders, manifests, timing, the checks every ONNX step shares, and wrapping
failures in a PassError. A pass declares what the engine needs to know as class attributes
(``uses_gate``); the engine never reads a pass's config fields.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.artifact import Artifact, Format
from pipeline.model.inputs import DEFAULT_CORPUS

if TYPE_CHECKING:
    from pipeline.model.loading import ModelHandle

Inputs = dict[str, np.ndarray]

# Keys every step accepts besides its pass's own options. They decide where a step sits in the
# chain, not what it computes, so they are left out of the cache key.
STEP_KEYS = frozenset({"from", "name"})


class PassConfig(BaseModel):
    """Base of every pass's config: strict (unknown keys are errors), with the step keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str | None = Field(
        default=None, alias="from", description="Step whose artifact this step reads: a step name, or 'eager'."
    )
    name: str | None = Field(default=None, description="Step name (default: the pass name).")

    def cache_config(self) -> dict[str, Any]:
        """The options that decide the output, as plain JSON values."""
        return self.model_dump(mode="json", exclude={"from_", "name"})


@dataclass(frozen=True)
class IOSpec:
    """Names and dynamic axes of the model's inputs and outputs, and the export shape."""

    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    export_batch: int
    export_seq: int


@dataclass(frozen=True)
class GateResult:
    """A candidate model's verdict against eager, as the verification stage would give it."""

    passed: bool
    failures: list[str]
    cos_min: float
    max_abs: float


Gate = Callable[[Path, str], GateResult]


@dataclass
class PassContext:
    """What a pass may use besides its parent artifact.

    ``gate`` (in the context a step runs with, when the reference exists) checks a candidate ONNX file
    of a given precision against eager with this step's tolerance; a pass that repairs itself uses it.
    ``gate_digest`` identifies the reference and tolerances, for cache keys of such passes.
    """

    model: ModelHandle
    io: IOSpec
    sample_inputs: Callable[[int, int], Inputs]
    calibration_inputs: Callable[[Path, int, int], list[Inputs]]
    base_dir: Path
    device: str = "cpu"
    gate: Gate | None = None
    gate_digest: str | None = None

    def sentence_file(self, configured: str | None) -> Path:
        """The sentence file a pass's config names (relative to the recipe's folder), or the bundled corpus."""
        return self.resolve(configured) if configured else DEFAULT_CORPUS

    def resolve(self, path: str | Path) -> Path:
        """A path from the recipe, relative to the recipe's folder unless absolute."""
        path = Path(path)
        return path if path.is_absolute() else (self.base_dir / path)


@dataclass
class PassOutput:
    """What a pass wrote: its main file (relative to its folder), metadata and statistics."""

    file: str
    meta: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Pass(ABC):
    """One step of the chain. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    consumes: ClassVar[frozenset[Format]]
    produces: ClassVar[Format]
    Config: ClassVar[type[PassConfig]] = PassConfig

    def __init__(self, config: PassConfig) -> None:
        self.config = config

    @abstractmethod
    def run(self, parent: Artifact, ctx: PassContext, out_dir: Path) -> PassOutput:
        """Write a new artifact derived from ``parent`` into the empty folder ``out_dir``."""

    @property
    def uses_gate(self) -> bool:
        """Whether this step runs the parity gate itself (a pass that repairs against it): its output
        then depends on the reference and the tolerances, which join its cache key."""
        return False

    def check(self, ctx: PassContext) -> None:  # noqa: B027  (optional hook; most passes need none)
        """Raise RecipeError for problems visible before anything runs (a missing file, say)."""

    def data_digest(self, ctx: PassContext) -> str | None:
        """sha256 of any data the pass reads besides its parent (calibration set), for the cache key."""
        return None
