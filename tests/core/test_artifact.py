"""Artifact folders: atomic replacement, manifests checked before reuse."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.core.artifact import Artifact, Format, Precision, load_cached
from pipeline.core.seal import write_record
from pipeline.core.store import MANIFEST, file_hashes, json_safe, staging_folder


def _write_step(folder: Path, key: str, content: bytes = b"model") -> None:
    with staging_folder(folder) as tmp:
        (tmp / "model.onnx").write_bytes(content)
        write_record(tmp / MANIFEST, {"step": folder.name, "format": "onnx", "key": key, "file": "model.onnx",
                                      "sha256": "x", "files": file_hashes(tmp), "config": {}, "meta": {}, "stats": {},
                                      "parent": "eager", "pass": "onnx_export"})


def test_cached_artifact_is_reused_only_with_its_key(tmp_path: Path) -> None:
    folder = tmp_path / "01_onnx_export"
    _write_step(folder, "k1")
    assert load_cached(folder, "k1") is not None
    assert load_cached(folder, "k2") is None


def test_tampered_file_is_not_reused(tmp_path: Path) -> None:
    folder = tmp_path / "01_onnx_export"
    _write_step(folder, "k1")
    (folder / "model.onnx").write_bytes(b"truncat")
    assert load_cached(folder, "k1") is None


def test_failed_write_leaves_the_old_folder_whole(tmp_path: Path) -> None:
    folder = tmp_path / "01_onnx_export"
    _write_step(folder, "k1", b"old")
    with pytest.raises(RuntimeError), staging_folder(folder) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("pass died")
    assert (folder / "model.onnx").read_bytes() == b"old"
    assert load_cached(folder, "k1") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["01_onnx_export"]


def test_replacement_swaps_the_whole_folder(tmp_path: Path) -> None:
    folder = tmp_path / "01_onnx_export"
    _write_step(folder, "k1", b"old")
    _write_step(folder, "k2", b"new")
    assert load_cached(folder, "k2") is not None and (folder / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_onnx_export"]


def test_json_safe_writes_what_strict_json_has_no_number_for_as_strings() -> None:
    assert json_safe({"a": [float("nan"), -math.inf, 1.0], 3: (1, 2)}) == {"a": ["nan", "-inf", 1.0], "3": [1, 2]}


def test_precision_is_an_enum_that_reads_and_writes_as_its_name() -> None:
    artifact = Artifact("05_fp16", Format.ONNX, "k", meta={"precision": "fp16"})
    assert artifact.precision is Precision.FP16 and f"{artifact.precision}" == "fp16" and artifact.precision == "fp16"
    assert Artifact("eager", Format.EAGER, "k").precision is Precision.FP32
