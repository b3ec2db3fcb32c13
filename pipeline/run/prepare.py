"""A recipe made ready to run: validated in full (recipe, chain, model's whereabouts, its input and output
names, every pass's config, the output folder), with its pass context and its plan; nothing written yet."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import RecipeError
from pipeline.core.output_folder import check_output_folder, output_folder
from pipeline.core.store import canonical_json, sha256_text
from pipeline.engine.chain import Step, build_steps
from pipeline.engine.context import make_context
from pipeline.engine.manager import PlannedStep, check_steps, plan
from pipeline.engine.pass_api import IOSpec, PassContext
from pipeline.model.cache import with_cache
from pipeline.model.inputs import load_sentences
from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import Recipe, load_recipe
from pipeline.verify.parity import labels_of
from pipeline.verify.reference import check_shape_limits, reference_key

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A recipe validated in full, with its context and plan; nothing written yet."""

    recipe: Recipe
    steps: list[Step]
    ctx: PassContext
    planned: list[PlannedStep]
    out_dir: Path

    @property
    def model(self) -> ModelHandle:
        """The model the recipe names."""
        return self.ctx.model


def prepare(recipe_path: Path, overrides: list[str] | None = None, out: Path | None = None,
            force: bool = False) -> Prepared:
    """Load and validate the recipe, the chain, the model's whereabouts and input and output names, every
    pass's config and the output folder (``force``: write into a folder this tool did not make)."""
    recipe = load_recipe(recipe_path, overrides)
    steps = build_steps(recipe)
    base_dir = Path.cwd()
    handle = ModelHandle(recipe.model, recipe.task, recipe.inputs.names, recipe.output_names, base_dir)
    handle.check_io()  # inputs.names and inputs.outputs against the model, from its config (no weights)
    axes = recipe.dynamic_axes
    if recipe.task == "text-generation":  # the cache tensors join the inputs and outputs
        _, axes = with_cache(handle, axes)
    io = IOSpec(input_names=handle.input_names, output_names=handle.output_names, dynamic_axes=axes,
                export_batch=recipe.inputs.export_batch, export_seq=recipe.inputs.export_seq)
    corpus = recipe.inputs.corpus_path
    if not corpus.is_absolute():
        corpus = base_dir / corpus
    if recipe.inputs.corpus and not corpus.exists():
        raise RecipeError(f"inputs.corpus: file {recipe.inputs.corpus} does not exist")
    if recipe.inputs.corpus:
        load_sentences(corpus, key="inputs.corpus")
    ctx = make_context(handle, io, base_dir, corpus=corpus, seed=recipe.inputs.seed, device=recipe.device)
    check_shape_limits(recipe, handle)
    ctx.gate_digest = sha256_text(reference_key(recipe, handle, base_dir)
                                  + canonical_json(recipe.verify.model_dump(mode="json")))
    if recipe.verify.accuracy is not None:
        labels_of(recipe.verify.accuracy, handle)
    check_steps(steps, ctx)
    _warn_on_weak_grid(recipe, handle)
    out_dir = output_folder(out, recipe.name)
    check_output_folder(out_dir, out, force)
    return Prepared(recipe, steps, ctx, plan(steps, ctx, out_dir), out_dir)


def _warn_on_weak_grid(recipe: Recipe, handle: ModelHandle) -> None:
    """A grid that only repeats the export shape, or hits a hidden size, can hide a baked-in axis."""
    seqs = {seq for _, seq in recipe.verify.shapes}
    config = handle.hf_config
    sizes = {getattr(config, key, None) for key in ("hidden_size", "dim", "num_attention_heads")} - {None}
    if recipe.verify.shapes and not seqs - {recipe.inputs.export_seq}:
        log.warning("verify.shapes: every sequence length equals the export length %d; a baked-in "
                    "sequence axis would go unnoticed", recipe.inputs.export_seq)
    if seqs & sizes:
        log.warning("verify.shapes: sequence length %s equals a hidden size of the model; a swapped axis "
                    "could go unnoticed", sorted(seqs & sizes))
    if recipe.verify.shapes and min(batch for batch, _ in recipe.verify.shapes) > 1:
        log.warning("verify.shapes: no shape at batch 1")
