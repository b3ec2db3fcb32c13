"""A recipe matrix: which recipes or models, which axes of ``--set`` overrides, what each cell needs.

    name: matrix_demo
    recipe: recipes/minilm_int8.yaml      # the recipe of every model that names none
    set: {bench.rounds: 4}                # overrides for every cell
    axes:                                 # every cell, once per label of each axis (a product)
      threads: {t1: {bench.threads: 1}, t2: {bench.threads: 2}}
    models:                               # one row each; a model's own axes multiply its cells only
      minilm:
        axes: {int8: {per_channel: {passes[2].int8_dynamic.per_channel: true}, ...}}
      bert_random: {recipe: recipes/bert_fp16.yaml, set: {model.weights: random}}
    resources: {build_cpus: 1, max_retries: 2}

``recipes: [a.yaml, b.yaml]`` is the short form of one model per recipe, named by the file's stem.
A cell is one model with one label of every axis: ``minilm-per_channel``. A matrix has at most
MAX_CELLS cells, counted before they are made.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import RecipeError
from pipeline.core.limits import MAX_RECIPE_BYTES, load_yaml, read_capped
from pipeline.recipe.load import NAME_RE, format_validation_error

Overrides = dict[str, Any]  # recipe key (as --set takes it) -> value
Axis = dict[str, Overrides]  # label -> the overrides it stands for
MAX_CELLS = 1000  # cells one matrix may have: each is an optimize run, its folder and its line in matrix.json


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_labels(axes: dict[str, Axis]) -> dict[str, Axis]:
    for axis, labels in axes.items():
        if not labels:
            raise ValueError(f"axis {axis!r} has no labels")
        for label in labels:
            if not NAME_RE.match(label):
                raise ValueError(f"axis {axis!r}: label {label!r} must be letters, digits, '_', '-' or '.'")
    return axes


class ModelRow(_Strict):
    """One model of the matrix: its recipe (default: the matrix's), overrides, and axes of its own."""

    recipe: Path | None = Field(default=None, description="Recipe YAML file (default: the matrix's recipe).")
    set: Overrides = Field(default_factory=dict, description="Overrides for this model's cells.")
    axes: dict[str, Axis] = Field(default_factory=dict, description="Axes of this model's cells only.")

    _labels = field_validator("axes")(_check_labels)


class Resources(_Strict):
    """What each cell asks of the cluster."""

    build_cpus: float = Field(default=1, gt=0, le=1024, description="Ray CPUs a cell's build and verification take.")
    max_retries: int = Field(default=2, ge=0, le=100,
                             description="Times Ray runs a cell's task again when its worker or node is lost.")
    timeout_seconds: float = Field(default=7200, gt=0, description="A cell's build or benchmark is stopped after "
                                                                   "this long (exit 3).")


class MatrixSpec(_Strict):
    """A whole matrix file."""

    name: str = Field(description="Names the report folder artifacts/matrix/<name>.")
    description: str = Field(default="", description="One line on what the matrix compares.")
    recipe: Path | None = Field(default=None, description="Recipe of every model that names none.")
    recipes: list[Path] = Field(default_factory=list, description="Short form: one model per recipe file.")
    models: dict[str, ModelRow] = Field(default_factory=dict, description="Models, by name (one row each).")
    set: Overrides = Field(default_factory=dict, description="Overrides for every cell.")
    axes: dict[str, Axis] = Field(default_factory=dict, description="Axes of every cell.")
    resources: Resources = Field(default_factory=Resources)
    compare: Literal["same_machine", "all"] = Field(
        default="same_machine", description="same_machine: rank cells only against cells measured on the same CPU "
                    "model with the same threads; all: rank every cell together.")

    _labels = field_validator("axes")(_check_labels)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(f"{name!r} must be letters, digits, '_', '-' or '.'")
        return name

    @model_validator(mode="after")
    def _rows(self) -> MatrixSpec:
        for path in self.recipes:
            if path.stem in self.models:
                raise ValueError(f"recipes: {path} names model {path.stem!r} twice")
            self.models[path.stem] = ModelRow(recipe=path)
        self.recipes = []
        if not self.models:
            raise ValueError("give models or recipes: the matrix has no cells")
        for name, row in self.models.items():
            if not NAME_RE.match(name):
                raise ValueError(f"models: name {name!r} must be letters, digits, '_', '-' or '.'")
            if row.recipe is None and self.recipe is None:
                raise ValueError(f"models.{name}: names no recipe, and the matrix has no default recipe")
            if set(row.axes) & set(self.axes):
                raise ValueError(f"models.{name}.axes: {sorted(set(row.axes) & set(self.axes))} is also a "
                                 "matrix-wide axis")
        return self


@dataclass(frozen=True)
class Cell:
    """One optimize run of the matrix: a model's recipe with the overrides of one label per axis."""

    name: str
    model: str
    recipe: Path
    overrides: tuple[str, ...]  # as --set takes them: key=value
    labels: tuple[tuple[str, str], ...]  # (axis, label), in axis order

    def as_json(self) -> dict[str, Any]:
        """The cell as matrix.json records it."""
        return {"name": self.name, "model": self.model, "recipe": self.recipe.as_posix(),
                "overrides": list(self.overrides), "labels": dict(self.labels)}


def override_texts(overrides: Overrides) -> list[str]:
    """``{key: value}`` as ``--set`` arguments; values written as JSON, which YAML reads back unchanged."""
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]


def cell_count(spec: MatrixSpec) -> int:
    """How many cells the matrix has, without expanding them: per model, the product of its axes' sizes."""
    return sum(math.prod(len(labels) for labels in {**spec.axes, **row.axes}.values())
               for row in spec.models.values())


def cells(spec: MatrixSpec) -> list[Cell]:
    """Every cell, model by model, then the product of the axes (matrix-wide ones first)."""
    out = []
    for model, row in spec.models.items():
        recipe = row.recipe or spec.recipe
        assert recipe is not None  # the spec's validator guarantees one
        axes = {**spec.axes, **row.axes}
        common = (*override_texts(spec.set), *override_texts(row.set))
        choices = [[(axis, label, tuple(override_texts(values))) for label, values in labels.items()]
                   for axis, labels in axes.items()]
        for choice in itertools.product(*choices):
            labels = tuple((axis, label) for axis, label, _ in choice)
            overrides = common + tuple(text for _, _, texts in choice for text in texts)
            name = "-".join([model, *(label for _, label in labels)])
            out.append(Cell(name, model, recipe, overrides, labels))
    return out


def load_matrix(path: Path) -> MatrixSpec:
    """Read and validate a matrix file; every problem is one RecipeError line naming the file and key."""
    where = f"matrix {path}"
    try:
        raw = load_yaml(read_capped(path, where, MAX_RECIPE_BYTES).decode("utf-8"), where)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{where}{line}: {getattr(exc, 'problem', None) or 'cannot read it'}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the top level must be a mapping, not {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    try:
        spec = MatrixSpec.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"{where}: {format_validation_error(exc, MatrixSpec)}") from None
    count = cell_count(spec)
    if count > MAX_CELLS:
        raise RecipeError(f"{where}: {count} cells, more than the {MAX_CELLS} a matrix may have; use fewer "
                          "models, axes or labels, or split it into several matrices")
    twice = sorted(name for name, times in Counter(cell.name for cell in cells(spec)).items() if times > 1)
    if twice:
        raise RecipeError(f"{where}: cell names {twice} come out twice; rename a model or a label")
    return spec
