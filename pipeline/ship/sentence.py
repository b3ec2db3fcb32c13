"""The bundle of a sentence-transformers model serves as its source does: the head's files beside the model,
and a tokenizer that stops where the model does.

``sentence_transformers.SentenceTransformer(bundle, backend="onnx")`` (or ``"openvino"``) reads, from the
bundle's root: ``modules.json`` (the Transformer module at path ``""``, so the model, config and tokenizer
it loads are the bundle's own), ``sentence_bert_config.json`` (``max_seq_length``), ``config_sentence_
transformers.json``, and each other module's folder (``1_Pooling/config.json``; a Normalize module has no
files). It finds the model itself through Optimum: ``model.onnx`` or ``openvino_model.xml`` at the root is
the first place it looks (``onnx/model.onnx`` and ``openvino/openvino_model.xml`` are its fallbacks), so
the model file stays where Optimum's ORTModel and optimum-intel's OVModel classes load it by default.

The tokenizer is written without the padding and truncation a ``tokenizer.json`` may carry baked in
(all-MiniLM-L6-v2's pads every input to 128 tokens and truncates there, which a plain ``tokenizers`` user
would silently get), and with ``model_max_length`` set to the head's ``max_seq_length``: transformers then
truncates where sentence-transformers does (256 for MiniLM, not 128 nor the 512 positions of the model).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.core.artifact import Artifact, Format
from pipeline.core.errors import ModelError
from pipeline.model.loading import ModelHandle
from pipeline.model.sentence import MODULES, SENTENCE_CONFIG, TOKEN_EMBEDDINGS, SentenceHead

log = logging.getLogger(__name__)

ST_CONFIG = "config_sentence_transformers.json"
# the formats SentenceTransformer loads through its backends, by the name of the backend
BACKENDS = {Format.ONNX: "onnx", Format.OPENVINO: "openvino"}
# tokenizer_config.json keys that restate the padding or truncation a tokenizer.json had baked in
BAKED_KEYS = ("max_length", "stride", "truncation_strategy", "pad_to_multiple_of")


def serving_head(handle: ModelHandle, artifact: Artifact) -> SentenceHead | None:
    """The sentence-transformers head the bundle of ``artifact`` is laid out for: the model's head when it
    has one, the task is feature extraction, the model's first output is the token embeddings, and
    SentenceTransformer has a backend for the format; None otherwise."""
    if artifact.format not in BACKENDS or handle.task != "feature-extraction":
        return None
    if not handle.output_names or handle.output_names[0] != TOKEN_EMBEDDINGS:
        return None
    return _head(handle)


def _head(handle: ModelHandle) -> SentenceHead | None:
    """The model's sentence-transformers head; None, with a warning, when its files name modules this project
    does not reproduce (a Dense layer): the bundle then ships without the head, as a plain encoder."""
    try:
        return handle.sentence_head
    except ModelError as exc:
        log.warning("ship: the bundle leaves out the sentence-transformers head: %s", exc)
        return None


def sentence_summary(handle: ModelHandle, head: SentenceHead | None, artifact: Artifact) -> dict[str, Any] | None:
    """manifest.json's ``sentence`` entry: how token embeddings become the sentence embedding, the longest
    input, and whether SentenceTransformer loads the bundle (and with which backend)."""
    laid_out_elsewhere = artifact.format not in BACKENDS and handle.output_names[:1] == [TOKEN_EMBEDDINGS]
    source = head or (_head(handle) if handle.task == "feature-extraction" and laid_out_elsewhere else None)
    if source is None:
        return None
    return {"pooling": source.pooling, "normalize": source.normalize, "max_seq_length": source.max_seq_length,
            "sentence_transformers_backend": BACKENDS[artifact.format] if head is not None else None}


def write_sentence_files(head: SentenceHead, dest: Path) -> list[str]:
    """Copy the head's files from the source model into ``dest`` (the bundle's root): modules.json (the
    Transformer module moved to the root when it lay in a folder of its own), sentence_bert_config.json,
    config_sentence_transformers.json and every other module's folder. Returns what was written, relative."""
    modules = json.loads((head.folder / MODULES).read_text(encoding="utf-8"))
    written: list[str] = []
    transformer_path = ""
    for module in modules:
        path = _relative(str(module.get("path", "")), head.folder / MODULES)
        if str(module.get("type", "")).rsplit(".", 1)[-1] == "Transformer":
            transformer_path, module["path"] = path, ""
        elif path:
            written += _copy_tree(head.folder / path, dest / path, dest)
    if transformer_path:
        (dest / MODULES).write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    else:
        shutil.copyfile(head.folder / MODULES, dest / MODULES)
    written.append(MODULES)
    for name, where in ((SENTENCE_CONFIG, head.folder / transformer_path), (ST_CONFIG, head.folder)):
        if (where / name).is_file():
            shutil.copyfile(where / name, dest / name)
            written.append(name)
    return sorted(written)


def _relative(path: str, where: Path) -> str:
    """A module's folder as modules.json names it: relative, inside the model's folder."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ModelError(f"{where}: module path {path!r} must be a folder inside the model's")
    return pure.as_posix() if path not in ("", ".") else ""


def _copy_tree(source: Path, target: Path, root: Path) -> list[str]:
    """The regular files under ``source`` (links followed to their files), copied to ``target``; their paths
    relative to ``root``. A module without a folder (Normalize) copies nothing."""
    if not source.is_dir():
        return []
    copied = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            out = target / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            copied.append(out.relative_to(root).as_posix())
    return copied


def write_tokenizer(handle: ModelHandle, dest: Path, max_length: int | None = None) -> None:
    """The tokenizer's files, when the model has a tokenizer: without baked-in padding or truncation, and with
    ``model_max_length`` = ``max_length`` when given (the sentence head's ``max_seq_length``)."""
    tokenizer = handle.tokenizer
    if tokenizer is None:
        return
    tokenizer = copy.deepcopy(tokenizer)  # the run's own tokenizer stays as it was loaded
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    init_kwargs = getattr(tokenizer, "init_kwargs", None)
    if isinstance(init_kwargs, dict):
        for key in BAKED_KEYS:
            init_kwargs.pop(key, None)
    if max_length is not None:
        tokenizer.model_max_length = max_length
        if isinstance(init_kwargs, dict):
            init_kwargs["model_max_length"] = max_length
    tokenizer.save_pretrained(str(dest))
