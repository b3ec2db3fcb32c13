"""Versions of the libraries that decide what an artifact contains (part of every cache key)."""

from __future__ import annotations

import functools
import importlib.util
from importlib import metadata
from pathlib import Path

import pipeline
from pipeline.core.store import sha256_file, sha256_text

SOURCE_PACKAGES = ("pipeline", "passes")  # the packages whose code decides what a run does
LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "onnxsim", "numpy",
             "openvino", "nncf", "sentence-transformers")
MODULES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxsim", "numpy", "openvino", "nncf",
           "sentence_transformers")


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed version of each library that shapes artifacts, and of this project."""
    versions = {"model-pipeline": pipeline.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def import_origins() -> dict[str, str | None]:
    """Where each library would be imported from (None: not importable), found without importing it: a
    package shadowed by ``PYTHONPATH`` or a file dropped into the path changes what a run does."""
    origins: dict[str, str | None] = {}
    for name in MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origins[name] = None if spec is None else str(spec.origin or list(spec.submodule_search_locations or []))
    return origins


@functools.cache
def source_digest() -> str:
    """sha256 over this project's Python source, file by file (a run's outcome depends on its code as
    much as on its libraries)."""
    root = Path(pipeline.__file__).resolve().parents[1]
    parts = []
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts.append(f"{path.relative_to(root).as_posix()}:{sha256_file(path)}")
    return sha256_text("\n".join(parts))
