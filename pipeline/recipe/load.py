"""A recipe loaded from YAML with ``--set`` overrides, validated against the strict schema (an unknown key is
an error that names its path and the nearest valid key). Its chain of steps is checked in engine.chain.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from pipeline.core.errors import RecipeError
from pipeline.core.limits import MAX_RECIPE_BYTES, load_yaml, read_capped
from pipeline.model.spec import TASKS, ModelSpec
from pipeline.recipe.schema import BenchSpec, InputsSpec, ShipSpec, Strict, VerifySpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_OUTPUTS = {"feature-extraction": ["last_hidden_state"], "text-classification": ["logits"],
                   "text-generation": ["logits"]}


RESERVED_NAMES = ("eager", "ratios")
MATRIX_PREFIX = "matrix_"  # recipes/matrix_*.yaml are recipe matrices (python -m pipeline matrix), not recipes


def recipe_files(folder: Path) -> list[Path]:
    """The recipe files of a folder, sorted (recipe matrices, ``matrix_*.yaml``, are not recipes)."""
    return sorted(p for p in folder.glob("*.yaml") if not p.name.startswith(MATRIX_PREFIX))


def matrix_files(folder: Path) -> list[Path]:
    """The recipe matrix files of a folder (``matrix_*.yaml``), sorted."""
    return sorted(folder.glob(f"{MATRIX_PREFIX}*.yaml"))  # the baseline target, and bench/ratios.json


class Recipe(Strict):
    """A whole recipe: the model, the task, the chain of passes, and what to check and ship."""

    name: str = Field(description="Recipe name; names its output folder.")
    description: str = Field(default="", description="One line on what the recipe is for.")
    model: ModelSpec
    task: str = Field(description=f"One of: {', '.join(TASKS)}.")
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="Device that runs and verifies artifacts.")
    inputs: InputsSpec = Field(default_factory=InputsSpec)
    passes: list[Any] = Field(description="Ordered steps: '- pass_name: {options}'.")
    verify: VerifySpec = Field(default_factory=VerifySpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    ship: ShipSpec = Field(default_factory=ShipSpec)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_RE.match(name) or ".." in name:
            raise ValueError(f"{name!r} must be letters, digits, '_', '-' or '.', and not climb out of its folder")
        return name

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
        return task

    @property
    def output_names(self) -> list[str]:
        """Output names from the recipe, or the task's default."""
        return self.inputs.outputs or DEFAULT_OUTPUTS[self.task]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes from the recipe, or batch and sequence on every input and output."""
        if self.inputs.dynamic_axes is not None:
            return self.inputs.dynamic_axes
        axes = {name: {0: "batch", 1: "sequence"} for name in [*self.inputs.names, *self.output_names]}
        if self.task == "text-classification":
            axes["logits"] = {0: "batch"}
        if self.task == "text-generation" and "attention_mask" in axes:
            axes["attention_mask"] = {0: "batch", 1: "total_sequence"}  # past and current tokens
        return axes


# -- errors -----------------------------------------------------------------------------------
def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_of(cls: Any) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {(f.alias or name): f.annotation for name, f in cls.model_fields.items()}
    return {}


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The pydantic model class found by walking ``loc`` (field names, list indices, dict keys) from ``cls``."""
    current: Any = cls
    skip_key = False
    for part in loc:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        annotation = _fields_of(current).get(part)
        if annotation is None:
            return None
        skip_key = getattr(annotation, "__origin__", None) is dict
        current = next((arg for arg in getattr(annotation, "__args__", (annotation,))
                        if isinstance(arg, type) and issubclass(arg, BaseModel)), annotation)
    return current


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = ()) -> str:
    """One line for the first error: its path, what is wrong, and for an unknown key the nearest valid one."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(part for part in err["loc"] if part not in ("function-after", "function-before"))
    where = _loc_text(prefix + loc) or "recipe"
    if err["type"] == "extra_forbidden":
        valid = _fields_of(_model_at(model, loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), list(valid), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
        return f"{where}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{where}: missing"
    message = err["msg"].removeprefix("Value error, ")
    more = len(errors) - 1
    return f"{where}: {message} (got {err.get('input')!r})" + (f" (+{more} more)" if more else "") \
        if err["type"] not in ("value_error", "assertion_error") else f"{where}: {message}"


# -- loading ----------------------------------------------------------------------------------
def _parse_override(text: str) -> tuple[list[str | int], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected key=value")
    path: list[str | int] = []
    for part in re.split(r"\.(?![^\[]*\])", key.strip()):
        match = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", part)
        if not match:
            raise RecipeError(f"--set {text!r}: cannot read key {key!r}")
        if match.group(1):
            path.append(int(match.group(1)) if match.group(1).isdigit() else match.group(1))
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    try:
        parsed = load_yaml(value, f"--set {text!r}") if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Apply one ``a.b[2].c=value`` override to the raw recipe (the value is read as YAML)."""
    path, value = _parse_override(text)
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise RecipeError(f"--set {text!r}: {_loc_text(tuple(path[:i + 1]))} is out of range")
            if isinstance(node[part], str):
                node[part] = {node[part]: {}}
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"--set {text!r}: {_loc_text(tuple(path[:i]))} is not a mapping")
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"--set {text!r}: cannot set {_loc_text(tuple(path))}")


def load_raw(path: Path) -> dict[str, Any]:
    """The recipe file as a mapping: a regular file of at most MAX_RECIPE_BYTES, read with yaml's safe
    loader after its aliases are checked (pipeline/core/limits.py)."""
    where = f"recipe {path}"
    try:
        text = read_capped(Path(path), where, MAX_RECIPE_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where}: cannot read it ({exc})") from None
    try:
        raw = load_yaml(text, where)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RecipeError(f"{where}{line}: {problem}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the top level must be a mapping, not {type(raw).__name__}")
    return raw


def parse_recipe(raw: dict[str, Any], default_name: str) -> Recipe:
    """Validate a raw recipe mapping; the first problem becomes one RecipeError line."""
    raw = dict(raw)
    raw.setdefault("name", default_name)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, Recipe)) from None


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file. The chain is checked by :func:`build_steps`."""
    raw = copy.deepcopy(load_raw(path))
    for text in overrides or []:
        apply_override(raw, text)
    return parse_recipe(raw, Path(path).stem)
