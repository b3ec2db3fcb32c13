"""The sentence file a pass calibrates or smooths on, checked before anything runs."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import RecipeError
from pipeline.engine.pass_api import PassContext
from pipeline.model.inputs import load_sentences


def check_sentence_file(ctx: PassContext, configured: str | None, key: str) -> Path:
    """The file ``key`` names (or the bundled corpus); RecipeError, naming ``key``, when it does not exist,
    holds no sentence or breaks a limit."""
    path = ctx.sentence_file(configured)
    if not path.exists():
        raise RecipeError(f"{key}: file {path} does not exist")
    load_sentences(path, key=key)
    return path
