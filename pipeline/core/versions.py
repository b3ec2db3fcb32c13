"""Versions of the libraries that decide what an artifact contains (part of every cache key)."""

from __future__ import annotations

import functools
from importlib import metadata

import pipeline

LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "onnxsim", "numpy")


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
