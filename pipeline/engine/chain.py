"""The chain of a recipe: its steps validated against the pass registry (each step's config, names, and
the formats each step reads and produces), and the recipe's JSON Schema with every pass's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pipeline.core.artifact import Format
from pipeline.core.errors import RecipeError
from pipeline.engine.pass_api import Pass, PassConfig
from pipeline.engine.registry import all_passes, get_pass
from pipeline.recipe.load import NAME_RE, RESERVED_NAMES, Recipe, format_validation_error


@dataclass(frozen=True)
class Step:
    """One validated step of the chain."""

    index: int
    name: str
    pass_cls: type[Pass]
    config: PassConfig
    source: str  # name of the step it reads, or "eager"

    @property
    def folder(self) -> str:
        """Folder name of its artifact: NN_<name>."""
        return f"{self.index:02d}_{self.name}"


def _step_entry(entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise RecipeError(f"{where}.{name}: options must be a mapping, not {type(options).__name__}")
        return str(name), options
    raise RecipeError(f"{where}: a step is a pass name or a one-key mapping '- pass_name: {{options}}'")


def build_steps(recipe: Recipe) -> list[Step]:
    """Validate every step's config and the chain's formats before anything runs."""
    if not recipe.passes:
        raise RecipeError("passes: the chain is empty; name at least one pass")
    steps: list[Step] = []
    produced: dict[str, Format] = {"eager": Format.EAGER}
    for i, entry in enumerate(recipe.passes):
        where = f"passes[{i}]"
        pass_name, options = _step_entry(entry, where)
        pass_cls = get_pass(pass_name, where)
        try:
            config = pass_cls.Config.model_validate(options)
        except ValidationError as exc:
            raise RecipeError(format_validation_error(exc, pass_cls.Config, (f"passes[{i}]", pass_name))) from None
        name = config.name or pass_name
        if not NAME_RE.match(name) or name in RESERVED_NAMES:
            raise RecipeError(f"{where}.{pass_name}.name: {name!r} is not a valid step name"
                              + (" (reserved)" if name in RESERVED_NAMES else ""))
        if name in produced:
            raise RecipeError(f"{where}.{pass_name}: a step named {name!r} comes earlier; give this one a name")
        source = config.from_ or (steps[-1].name if steps else "eager")
        if source not in produced:
            raise RecipeError(f"{where}.{pass_name}.from: no earlier step {source!r} "
                              f"(earlier: {', '.join(produced)})")
        if produced[source] not in pass_cls.consumes:
            wanted = "/".join(sorted(f.value for f in pass_cls.consumes))
            raise RecipeError(f"{where}.{pass_name}: reads {wanted}, but {source!r} produces "
                              f"{produced[source].value}; put it after a step that produces {wanted}")
        produced[name] = pass_cls.produces
        steps.append(Step(index=i + 1, name=name, pass_cls=pass_cls, config=config, source=source))
    _check_names(recipe, [s.name for s in steps])
    return steps


def _check_names(recipe: Recipe, names: list[str]) -> None:
    for exempt in recipe.verify.exempt:
        if exempt not in names:
            raise RecipeError(f"verify.exempt: no step named {exempt!r} (steps: {', '.join(names)})")
    for step in recipe.verify.steps:
        if step not in names:
            raise RecipeError(f"verify.steps.{step}: no step of that name (steps: {', '.join(names)})")
        for output in recipe.verify.steps[step].outputs:
            if output not in recipe.output_names:
                raise RecipeError(f"verify.steps.{step}.outputs.{output}: not an output "
                                  f"({', '.join(recipe.output_names)})")
    if recipe.verify.accuracy is not None and recipe.task != "text-classification":
        raise RecipeError(f"verify.accuracy: task accuracy needs task text-classification, not {recipe.task}")
    if recipe.ship.step is not None and recipe.ship.step not in names:
        raise RecipeError(f"ship.step: no step named {recipe.ship.step!r} (steps: {', '.join(names)})")


def json_schema() -> dict[str, Any]:
    """JSON Schema of a recipe, with every registered pass's options under ``passes``."""
    schema = Recipe.model_json_schema()
    variants: list[dict[str, Any]] = []
    for name, cls in all_passes().items():
        options = cls.Config.model_json_schema(by_alias=True)
        variants.append({"type": "string", "const": name})
        variants.append({"type": "object", "additionalProperties": False, "required": [name],
                         "properties": {name: {"anyOf": [options, {"type": "null"}]}}})
    schema["properties"]["passes"] = {"type": "array", "minItems": 1, "items": {"anyOf": variants},
                                      "description": "Ordered steps: '- pass_name: {options}'."}
    return schema
