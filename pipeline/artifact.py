"""Artifact records, their manifests, and atomic, content-checked storage on disk.

Each step of a recipe owns a folder ``NN_<step>/`` holding its file(s) and ``manifest.json``.
A folder is written under a temporary name and renamed into place when complete, so a folder
with a final name is always whole; before reuse its files are checked against their sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError

MANIFEST = "manifest.json"


class Format(str, Enum):
    """What kind of model an artifact holds."""

    EAGER = "eager"
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


@dataclass(frozen=True)
class Artifact:
    """One model produced by a step (or the eager source, which has no file)."""

    step: str
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
    def precision(self) -> str:
        """Numeric precision of the weights: fp32, fp16 or int8."""
        return str(self.meta.get("precision", "fp32"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest, by relative POSIX path."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            hashes[path.relative_to(folder).as_posix()] = sha256_file(path)
    return hashes


@contextmanager
def staging_folder(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success, replace ``final`` with it in one rename.

    On any error (or interruption) the temporary folder is removed and ``final`` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``; an existing ``final`` is moved aside first and then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it is missing or unreadable."""
    return read_json(folder / MANIFEST)


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
        step=manifest["step"],
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
    except ArtifactError:
        return None
    return artifact_from_manifest(folder, manifest)
