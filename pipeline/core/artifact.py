"""Artifact records and their manifests.

Each step of a recipe owns a folder ``NN_<step>/`` holding its file(s) and ``manifest.json``.
A folder is written under a temporary name and renamed into place when complete
(pipeline.core.store), so a folder with a final name is always whole; before reuse its files are
checked against their sha256, and its manifest against its seal (pipeline.core.seal): a manifest
edited by hand, or copied from another user's folder, makes the step absent, so it is built again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.core.errors import ArtifactError
from pipeline.core.seal import read_record
from pipeline.core.store import MANIFEST, file_hashes

log = logging.getLogger(__name__)


class Precision(str, Enum):
    """The numeric precision of an artifact's weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"  # 4-bit weights (int8 or float activations), where some layers may keep 8 bits

    def __str__(self) -> str:
        return self.value


class Format(str, Enum):
    """What kind of model an artifact holds."""

    EAGER = "eager"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"  # a torch.export ExportedProgram (.pt2)
    ONNX = "onnx"
    OPENVINO = "openvino"  # OpenVINO IR: model.xml with its weights in model.bin


@dataclass(frozen=True)
class Artifact:
    """One model produced by a step (or the eager source, which has no file)."""

    step_folder: str  # the folder of the step that made it (NN_<name>); "eager" for the source
    format: Format
    key: str
    path: Path | None = None
    sha256: str | None = None
    parent: str | None = None
    produced_by: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> Precision:
        """Numeric precision of the weights: fp32, fp16 or int8."""
        return Precision(self.meta.get("precision", Precision.FP32))


# the fields of a step manifest an Artifact is built from, and their types
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": str, "format": str, "key": str, "file": str, "sha256": str, "files": dict, "config": dict,
    "meta": dict, "stats": dict, "parent": (str, type(None)), "pass": (str, type(None))}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The step folder's sealed manifest, or None (with a warning) when it is missing, unreadable, not
    sealed by this tool, or malformed."""
    manifest = read_record(folder / MANIFEST, "step manifest")
    if manifest is None:
        return None
    problem = manifest_problem(manifest)
    if problem is not None:
        log.warning("%s: %s; the step is built again", folder / MANIFEST, problem)
        return None
    return manifest


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a step manifest unusable (a field missing or of the wrong type, an unknown format, a file
    outside its folder), or None."""
    for name, kind in _FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            return f"field {name!r} missing or not a {getattr(kind, '__name__', 'value')}"
    if manifest["format"] not in {f.value for f in Format}:
        return f"unknown format {manifest['format']!r}"
    if not all(isinstance(k, str) and isinstance(v, str) and _inside(k) for k, v in manifest["files"].items()):
        return "its files table names a path outside the folder or a digest that is not text"
    if not _inside(manifest["file"]) or manifest["file"] not in manifest["files"]:
        return f"its file {manifest['file']!r} is not among its files"
    return None


def _inside(relative: str) -> bool:
    """Whether a relative POSIX path stays inside its folder."""
    parts = relative.split("/")
    return bool(relative) and not relative.startswith("/") and ".." not in parts and "\0" not in relative


def verify_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Raise ArtifactError unless the files in ``folder`` are exactly those the manifest lists."""
    expected = manifest.get("files", {})
    actual = file_hashes(folder)
    if actual != expected:
        changed = sorted(set(expected) ^ set(actual) | {k for k in expected if actual.get(k) != expected[k]})
        raise ArtifactError(f"{folder}: files do not match {MANIFEST}: {', '.join(changed)}")


def artifact_from_manifest(folder: Path, manifest: dict[str, Any]) -> Artifact:
    """Rebuild an Artifact record from a step folder and its manifest."""
    return Artifact(
        step_folder=manifest["step"],
        format=Format(manifest["format"]),
        key=manifest["key"],
        path=folder / manifest["file"],
        sha256=manifest["sha256"],
        parent=manifest.get("parent"),
        produced_by=manifest.get("pass"),
        config=manifest.get("config", {}),
        meta=manifest.get("meta", {}),
        stats=manifest.get("stats", {}),
    )


def load_cached(folder: Path, key: str) -> Artifact | None:
    """The artifact in ``folder`` if its manifest has this cache key and its files are intact."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("key") != key:
        return None
    try:
        verify_folder(folder, manifest)
    except ArtifactError as exc:
        log.warning("%s; the step is built again", exc)
        return None
    return artifact_from_manifest(folder, manifest)
