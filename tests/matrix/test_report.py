"""The matrix report: what a cell's report.json gives it, and ranking only like with like."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.seal import write_record
from pipeline.matrix.cell import message_of, summarize_report
from pipeline.matrix.report import best_per_kind, markdown, write_matrix_report

AMD = {"cpu": "AMD EPYC", "logical_cores": 2, "threads": 2, "device": "cpu"}
XEON = {"cpu": "Intel Xeon", "logical_cores": 2, "threads": 2, "device": "cpu"}


def entry(name: str, model: str, ratio: float, machine: dict, exit_code: int = 0) -> dict:
    return {"cell": {"name": name, "model": model}, "exit_code": exit_code, "message": "shipped",
            "summary": {"shipped_step": "int8_dynamic", "format": "onnx", "precision": "int8", "cos_min": 0.995,
                        "ratio": {"ratio": ratio, "ci95": [ratio - 0.1, ratio + 0.1]}, "machine": machine,
                        "artifact_bytes": 23_000_000, "random_weights": model != "minilm"}}


def test_the_best_cell_is_chosen_per_model_among_cells_of_the_same_kind_of_machine() -> None:
    cells = [entry("minilm-a", "minilm", 2.5, AMD), entry("minilm-b", "minilm", 2.9, AMD),
             entry("minilm-c", "minilm", 3.5, XEON), entry("minilm-d", "minilm", 9.0, AMD, exit_code=1),
             entry("bert-a", "bert", 1.5, AMD)]
    best = best_per_kind(cells, "same_machine")
    amd, xeon = "AMD EPYC, 2 threads, cpu", "Intel Xeon, 2 threads, cpu"
    assert best[amd]["minilm"]["cell"]["name"] == "minilm-b"  # a cell that shipped nothing never ranks
    assert best[xeon]["minilm"]["cell"]["name"] == "minilm-c" and best[amd]["bert"]["cell"]["name"] == "bert-a"
    assert best_per_kind(cells, "all")["all"]["minilm"]["cell"]["name"] == "minilm-c"
    text = markdown({"matrix": "m", "cells": cells, "compare": "same_machine"})
    assert "2.90x [2.80, 3.00]" in text and "| 23.0 |" in text
    assert "RANDOM WEIGHTS (seeded) in bert-a" in text and f"### {xeon}" in text


def test_the_report_files_are_written_from_matrix_json(tmp_path: Path) -> None:
    cells = [entry("minilm-a", "minilm", 2.5, AMD), {"cell": {"name": "bad", "model": "bad"}, "exit_code": 2,
                                                       "message": "error: bad | recipe", "summary": {}}]
    write_record(tmp_path / "matrix.json", {"matrix": "m", "cells": cells, "compare": "all"})
    path = write_matrix_report(tmp_path)
    assert "| bad | bad |" in path.read_text() and "error: bad / recipe" in path.read_text()
    assert (tmp_path / "plots" / "speedup.png").stat().st_size > 1000


def test_a_cell_summary_comes_from_its_report_json(tmp_path: Path) -> None:
    (tmp_path / "ship").mkdir()
    (tmp_path / "ship" / "model.onnx").write_bytes(b"x" * 1000)
    ratios = [{"target": "int8", "batch": 1, "seq": 16, "ratio": 2.0, "ci95": [1.9, 2.1], "rounds": 8},
              {"target": "int8", "batch": 1, "seq": 128, "ratio": 3.0, "ci95": [2.8, 3.1], "rounds": 24},
              {"target": "fp16", "batch": 1, "seq": 128, "ratio": 1.0, "ci95": [0.9, 1.1], "rounds": 24}]
    report = {"shipped_step": "int8", "bundle": "ship", "random_weights": False, "model": {"source": "packaged:m"},
              "bench_environment": {**AMD, "versions": {}}, "ratios": ratios,
              "artifacts": [{"name": "int8", "format": "onnx", "precision": "int8", "stats": {"bytes": 700},
                             "parity": {"passed": True, "metrics": {"out": {"cos_min": 0.993}}}}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    summary = summarize_report(tmp_path / "report.json")
    assert summary["ratio"]["ratio"] == 3.0 and summary["cos_min"] == 0.993
    assert summary["bundle_bytes"] == 1000 and summary["artifact_bytes"] == 700
    assert summary["machine"] == AMD and summary["format"] == "onnx" and summary["parity_passed"] is True
    assert summarize_report(tmp_path / "absent.json") == {}


def test_the_message_is_the_line_that_says_why() -> None:
    log = "12:00 INFO step 1\nerror: recipe r.yaml: passes[0]: unknown pass 'x'\n"
    assert message_of(log, 2) == "error: recipe r.yaml: passes[0]: unknown pass 'x'"
    assert message_of("12:00 INFO done\n", 0) == "shipped"
    assert message_of("", -9) == "exit -9"
