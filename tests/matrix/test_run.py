"""A matrix run without Ray: the output folder's rules, matrix.json's seal and shape, and cell paths."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.core.errors import BadInputError
from pipeline.core.seal import read_record, write_record
from pipeline.matrix.report import markdown, write_matrix_report
from pipeline.matrix.run import run_matrix
from pipeline.matrix.state import load_saved


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_out_refuses_a_folder_the_tool_did_not_make(write_matrix: Callable[..., Path], fake_cluster: list[str],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_matrix()
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "matrix.md").write_text("mine\n")
    assert main(["matrix", str(path), "--out", "u"]) == 2
    assert "--out u" in one_error_line(capsys.readouterr().err) and fake_cluster == []
    assert (tmp_path / "u" / "matrix.md").read_text() == "mine\n"
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["matrix.md"]

    assert main(["matrix", str(path), "--out", "u", "--force"]) == 0
    assert (tmp_path / "u" / ".model-pipeline").is_file() and "| a |" in (tmp_path / "u" / "matrix.md").read_text()
    assert main(["matrix", str(path), "--out", "u"]) == 0  # marked now: no --force needed


def test_out_refuses_climbing_out_of_the_working_folder(write_matrix: Callable[..., Path], fake_cluster: list[str],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_matrix()
    (tmp_path / "w" / "d").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "w" / "d")
    assert main(["matrix", str(path), "--out", "../../etc/x"]) == 2
    assert "'..'" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "etc").exists() and fake_cluster == []


@pytest.mark.parametrize("kind", ["dev-null", "fifo", "file", "under-a-file"])
def test_out_refuses_what_is_not_a_folder(write_matrix: Callable[..., Path], fake_cluster: list[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path = write_matrix()
    out = {"dev-null": "/dev/null", "fifo": str(tmp_path / "fifo"), "file": str(tmp_path / "file"),
           "under-a-file": str(tmp_path / "file" / "x")}[kind]
    if kind == "fifo":
        os.mkfifo(out)
    (tmp_path / "file").write_text("mine\n")
    assert main(["matrix", str(path), "--out", out]) == 2
    assert "not a folder" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "file").read_text() == "mine\n" and fake_cluster == []


def test_matrix_json_is_sealed_and_an_edited_cell_runs_again(write_matrix: Callable[..., Path],
                                                             fake_cluster: list[str], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = write_matrix()
    assert run_matrix(path, root=tmp_path) == 0 and fake_cluster == ["a", "b"]
    record = tmp_path / "artifacts" / "matrix" / "m" / "matrix.json"
    assert read_record(record, "matrix record") is not None
    assert run_matrix(path, root=tmp_path) == 0 and fake_cluster == ["a", "b"]  # both reused

    edited = json.loads(record.read_text())
    edited["cells"][0]["message"] = "shipped, honestly"
    record.write_text(json.dumps(edited))
    assert run_matrix(path, root=tmp_path) == 0
    assert fake_cluster == ["a", "b", "a", "b"] and "matrix.json" in caplog.text and "matrix record" in caplog.text
    assert read_record(record, "matrix record") is not None  # sealed again


def entry(name: str, **fields: Any) -> dict[str, Any]:
    return {"cell": {"name": name, "model": name}, "key": f"key-{name}", "exit_code": 0, "message": "shipped",
            "phases": {}, "summary": {}, "reused": False, **fields}


MALFORMED: list[Any] = [
    [1], {"cells": 5}, {"cells": [1]}, {"cells": ["a", None, []]}, {"cells": [{"cell": 5}]},
    {"cells": [{"cell": {"name": ["a"], "model": "a"}}]},
    {"cells": [entry("a", exit_code="0"), entry("b", exit_code=True)]},
    {"cells": [entry("a", key=5), entry("b", message=None)]},
    {"cells": [entry("a", phases=5), entry("b", phases={"build": 7})]},
    {"cells": [entry("a", summary=[1]), entry("b", reused="yes")]},
    {"cells": [{"cell": {"name": "a", "model": "a"}}, entry("b", exit_code=[0])]},
]


@pytest.mark.parametrize("record", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_matrix_json_is_never_reused_and_never_crashes(write_matrix: Callable[..., Path],
                                                                    fake_cluster: list[str], tmp_path: Path,
                                                                    record: Any) -> None:
    path = write_matrix()
    folder = tmp_path / "artifacts" / "matrix" / "m"
    folder.mkdir(parents=True)
    (folder / ".model-pipeline").write_text(json.dumps({"tool": "model-pipeline"}))
    if isinstance(record, dict):
        write_record(folder / "matrix.json", record)
    else:
        (folder / "matrix.json").write_text(json.dumps(record))
    assert run_matrix(path, root=tmp_path) == 0
    assert fake_cluster == ["a", "b"]


def test_only_well_formed_finished_cells_are_kept(tmp_path: Path) -> None:
    write_record(tmp_path / "matrix.json", {"cells": [entry("a"), entry("b", exit_code="0"), 3, entry("c"),
                                                      entry("a", exit_code=1)]})
    saved = load_saved(tmp_path)
    assert sorted(saved) == ["a", "c"] and saved["a"]["exit_code"] == 0


BAD_SUMMARIES: list[Any] = [
    5, [], {"ratio": 5}, {"ratio": {"ratio": "2", "ci95": [1, 2]}}, {"ratio": {"ratio": 2.0, "ci95": 5}},
    {"ratio": {"ratio": 2.0, "ci95": [1]}}, {"ratio": {"ratio": 2.0, "ci95": ["a", "b"]}},
    {"ratio": {"ratio": True, "ci95": [1, 2]}}, {"cos_min": "nan"}, {"cos_min": [1]}, {"artifact_bytes": "big"},
    {"machine": 5}, {"machine": ["cpu"]}, {"shipped_step": {"a": 1}, "random_weights": "yes"},
]


@pytest.mark.parametrize("summary", BAD_SUMMARIES, ids=range(len(BAD_SUMMARIES)))
def test_the_report_shows_malformed_fields_as_missing(tmp_path: Path, summary: Any) -> None:
    good = entry("good", summary={"ratio": {"ratio": 2.0, "ci95": [1.9, 2.1]}, "shipped_step": "s",
                                  "format": "onnx", "precision": "int8", "cos_min": 0.99,
                                  "machine": {"cpu": "c", "threads": 2, "device": "cpu"}})
    cells = [good, entry("bad", summary=summary), entry("odd", message=7, exit_code="x"), {"cell": 3}, 9]
    text = markdown({"matrix": "m", "cells": cells, "compare": "same_machine", "description": 5})
    assert "| good |" in text and "| bad |" in text and "| odd |" in text and "2.00x [1.90, 2.10]" in text
    write_record(tmp_path / "matrix.json", {"matrix": ["m"], "cells": cells, "compare": "nonsense"})
    assert "| bad |" in write_matrix_report(tmp_path).read_text()


@pytest.mark.parametrize("record", [{"cells": 5}, {"matrix": "m"}, {"cells": [1]}])
def test_the_report_of_a_malformed_record_is_a_report_of_no_cells(tmp_path: Path, record: dict) -> None:
    write_record(tmp_path / "matrix.json", record)
    assert "No cell shipped" in write_matrix_report(tmp_path).read_text()


def test_the_report_of_an_unsealed_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / "matrix.json").write_text(json.dumps({"matrix": "m", "cells": []}))
    with pytest.raises(BadInputError, match="matrix.json"):
        write_matrix_report(tmp_path)


def test_a_cell_whose_folder_name_is_too_long_is_refused_before_any_task(
        write_matrix: Callable[..., Path], fake_cluster: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, first, second = "m" * 100, "x" * 100, "y" * 100
    path = write_matrix(models={model: {}}, axes={"one": {first: {}}, "two": {second: {}}})
    assert main(["matrix", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{model}-{first}-{second}" in line and "255" in line and "m.yaml" in line
    assert fake_cluster == [] and not (tmp_path / "artifacts").exists()


def test_a_cell_whose_path_is_too_long_is_refused(write_matrix: Callable[..., Path], fake_cluster: list[str],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"PC_NAME_MAX": 255, "PC_PATH_MAX": len(os.fsencode(str(tmp_path))) + 200}
    monkeypatch.setattr(os, "pathconf", lambda _, name: limits[name])
    path = write_matrix(models={"c" * 60: {}})
    with pytest.raises(BadInputError, match=rf"cell {'c' * 60}: .* bytes .*, more than the {limits['PC_PATH_MAX']}"):
        run_matrix(path, out=tmp_path / "o", root=tmp_path)
    assert fake_cluster == [] and not (tmp_path / "o").exists()
    assert run_matrix(write_matrix(), out=tmp_path / "o", root=tmp_path) == 0


@pytest.mark.parametrize("name", ["cells", "logs"])
def test_a_link_in_place_of_a_matrix_subfolder_is_replaced_not_written_through(
        name: str, write_matrix: Callable[..., Path], fake_cluster: list[str], tmp_path: Path) -> None:
    path = write_matrix()
    assert run_matrix(path, root=tmp_path) == 0
    folder = tmp_path / "artifacts" / "matrix" / "m"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a").write_text("the user's\n")
    shutil.rmtree(folder / name, ignore_errors=True)
    (folder / name).symlink_to(mine)
    run_matrix(path, root=tmp_path)
    assert [p.name for p in mine.iterdir()] == ["a"] and (mine / "a").read_text() == "the user's\n"
    assert not (folder / name).is_symlink()
