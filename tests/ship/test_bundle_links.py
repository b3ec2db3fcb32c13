"""A bundle holds regular files only: `ship --check` reports every symbolic link or other special entry
(without following it), and building a bundle refuses one."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_ship import run_recipe

from pipeline.cli import main
from pipeline.core.errors import ArtifactError
from pipeline.report.outcome import RunResult
from pipeline.ship import bundle as ship
from pipeline.ship.bundle import build_bundle, bundle_files

REGULAR_ONLY = "(a bundle holds regular files only)"


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> RunResult:
    """The tiny BERT exported to ONNX, verified and ready to ship, with a Triton repository (ship.triton)."""
    folder = tmp_path_factory.mktemp("links")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return run_recipe(folder, tiny_bert_config, ["onnx_export"], out=folder / "out", ship={"triton": True})


@pytest.fixture(scope="module")
def bundle(onnx_run: RunResult) -> Path:
    return build_bundle(onnx_run)


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of the bundle to tamper with."""
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def dangling_data_link(copy: Path, outside: Path) -> str:
    (copy / "model.onnx.data").symlink_to(outside / "no-such-file")
    return "model.onnx.data"


def link_to_a_folder(copy: Path, outside: Path) -> str:
    (outside / "extra").mkdir()
    (outside / "extra" / "notes.txt").write_text("not shipped")
    (copy / "extra").symlink_to(outside / "extra", target_is_directory=True)
    return "extra"


def model_linked_to_an_identical_copy(copy: Path, outside: Path) -> str:
    shutil.copyfile(copy / "model.onnx", outside / "model.onnx")
    (copy / "model.onnx").unlink()
    (copy / "model.onnx").symlink_to(outside / "model.onnx")
    return "model.onnx"


def triton_model_linked_inside_the_bundle(copy: Path, outside: Path) -> str:
    inner = copy / "triton" / "tiny" / "1" / "model.onnx"
    inner.unlink()
    inner.symlink_to(Path("..", "..", "..", "model.onnx"))
    return "triton/tiny/1/model.onnx"


def triton_folder_linked_to_a_copy(copy: Path, outside: Path) -> str:
    shutil.move(copy / "triton", outside / "triton")
    (copy / "triton").symlink_to(outside / "triton", target_is_directory=True)
    return "triton"


def manifest_linked_to_a_copy(copy: Path, outside: Path) -> str:
    shutil.move(copy / "manifest.json", outside / "manifest.json")
    (copy / "manifest.json").symlink_to(outside / "manifest.json")
    return "manifest.json"


def a_fifo(copy: Path, outside: Path) -> str:
    os.mkfifo(copy / "triton" / "pipe")
    return "triton/pipe"


# (tampering, what the one finding says of the entry it returns)
CASES = [
    (dangling_data_link, "a symbolic link"),
    (link_to_a_folder, "a symbolic link"),
    (model_linked_to_an_identical_copy, "a symbolic link"),
    (triton_model_linked_inside_the_bundle, "a symbolic link"),
    (triton_folder_linked_to_a_copy, "a symbolic link"),
    (manifest_linked_to_a_copy, "a symbolic link"),
    (a_fifo, "not a regular file"),
]


@pytest.mark.parametrize(("tamper", "what"), CASES, ids=[case[0].__name__ for case in CASES])
def test_check_reports_an_entry_that_is_not_a_regular_file(tamper: Callable[[Path, Path], str], what: str,
                                                          copy: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["ship", "--check", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"{copy}: bundle intact"
    outside = tmp_path / "outside"
    outside.mkdir()
    entry = tamper(copy, outside)
    assert main(["ship", "--check", str(copy)]) == 1
    captured = capsys.readouterr()
    assert "intact" not in captured.out
    assert captured.err.splitlines() == [f"{copy}: {entry}: {what} {REGULAR_ONLY}"]


def test_bundle_files_refuses_a_link(copy: Path, tmp_path: Path) -> None:
    dangling_data_link(copy, tmp_path)
    with pytest.raises(ArtifactError, match=r"model\.onnx\.data: a symbolic link"):
        bundle_files(copy)


def test_building_a_bundle_never_ships_a_link(onnx_run: RunResult, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write_tokenizer = ship.write_tokenizer

    def tokenizer_as_a_link(handle: object, dest: Path, max_length: int | None = None) -> None:
        write_tokenizer(handle, dest, max_length)
        shutil.move(dest / "tokenizer.json", tmp_path / "tokenizer.json")
        (dest / "tokenizer.json").symlink_to(tmp_path / "tokenizer.json")

    monkeypatch.setattr(ship, "write_tokenizer", tokenizer_as_a_link)
    result = dataclasses.replace(onnx_run, out_dir=tmp_path / "out")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: a symbolic link"):
        build_bundle(result)
    assert not (tmp_path / "out" / "ship").exists()
