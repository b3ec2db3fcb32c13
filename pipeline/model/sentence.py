"""A sentence-transformers model's own head: how token embeddings become the sentence embedding users
consume (pooling, normalisation) and the longest input it reads, from the files beside the transformer
(``modules.json``, ``<n>_Pooling/config.json``, ``sentence_bert_config.json``). No torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ModelError
from pipeline.core.store import MAX_RECORD_BYTES, read_regular

MODULES = "modules.json"
SENTENCE_CONFIG = "sentence_bert_config.json"
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken"}
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
TOKEN_EMBEDDINGS = "last_hidden_state"  # the output the Transformer module hands to pooling


@dataclass(frozen=True)
class SentenceHead:
    """What a sentence-transformers model does after its transformer."""

    pooling: str  # mean, cls, max or lasttoken
    normalize: bool
    max_seq_length: int | None
    folder: Path  # where its files are
    pooling_path: str  # the Pooling module's folder, relative to ``folder``

    def embed(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings (batch, dim) from token embeddings (batch, seq, dim) and the attention mask."""
        keep = mask.astype(hidden.dtype)[..., None]
        if self.pooling == "mean":
            pooled = (hidden * keep).sum(axis=1) / np.clip(keep.sum(axis=1), 1e-9, None)
        elif self.pooling == "max":
            pooled = np.where(keep > 0, hidden, -np.inf).max(axis=1)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # the last token the mask keeps (right padding)
            pooled = hidden[np.arange(hidden.shape[0]), mask.sum(axis=1).astype(int) - 1]
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
        return pooled


def sentence_head(folder: Path) -> SentenceHead | None:
    """The sentence-transformers head of the model in ``folder``; None when it is not such a model (no
    ``modules.json``). ModelError, naming the file, when its files are malformed or name modules this
    project cannot reproduce (a Dense layer, say)."""
    modules_file = folder / MODULES
    if not modules_file.is_file():
        return None
    modules = _json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"{modules_file}: not a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unknown = [kind for kind in kinds if kind not in KNOWN_MODULES]
    if unknown or "Pooling" not in kinds:
        raise ModelError(f"{modules_file}: a sentence-transformers model with modules {kinds}; only Transformer, "
                         f"Pooling and Normalize are reproduced")
    pooling_path = str(modules[kinds.index("Pooling")].get("path", ""))
    pooling = _json(folder / pooling_path / "config.json")
    modes = [name for key, name in POOLING_MODES.items() if isinstance(pooling, dict) and pooling.get(key)]
    if len(modes) != 1:
        raise ModelError(f"{folder / pooling_path / 'config.json'}: one pooling mode of {sorted(POOLING_MODES)} "
                         f"must be true")
    config = _json(folder / SENTENCE_CONFIG) if (folder / SENTENCE_CONFIG).is_file() else {}
    length = config.get("max_seq_length") if isinstance(config, dict) else None
    return SentenceHead(modes[0], "Normalize" in kinds, int(length) if isinstance(length, int) else None,
                        folder, pooling_path)


def _json(path: Path) -> Any:
    """The JSON value in a regular file of at most MAX_RECORD_BYTES; ModelError naming the file otherwise."""
    data = read_regular(path, MAX_RECORD_BYTES)
    if data is None:
        raise ModelError(f"{path}: missing, not a regular file, or too large")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: not JSON ({exc})") from None
