"""Error localisation and repair: the plain conversion fails its gate, the repaired one passes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from passes.repair.budget import RepairBudget
from passes.repair.builds import Builds
from passes.repair.localize import localize
from passes.repair.search import Conversion, GateCheck, repair
from passes.repair.strategies import ForwardSelection
from pipeline.cli import main
from pipeline.engine.pass_api import GateResult
from pipeline.model.inputs import random_tokens


def test_localize_finds_the_node_whose_weight_was_changed(tiny_onnx, changed_matmul: tuple[str, Path]) -> None:
    target, broken = changed_matmul
    inputs = random_tokens(["input_ids", "attention_mask", "token_type_ids"], 2, 12, 30522)
    result = localize(broken, tiny_onnx.path, inputs)
    assert result.first is not None and result.first.node == target and result.first.op_type == "MatMul"
    assert result.worst[0].node == target and result.worst[0].added_db > 10


@pytest.fixture
def tight_recipe(write_tiny_recipe: Callable[..., Path]) -> Path:
    """int8 and fp16 steps whose gate is tighter than the plain conversions can meet."""
    return write_tiny_recipe(
        "tight",
        ["onnx_export",
         {"int8_dynamic": {"repair": True, "repair_max_fraction": 1.0}},
         {"int8_dynamic": {"from": "onnx_export", "name": "int8_plain"}},
         {"fp16": {"from": "onnx_export", "repair": True, "repair_max_fraction": 1.0}},
         {"fp16": {"from": "onnx_export", "name": "fp16_plain"}}],
        verify={"shapes": [[2, 20]], "sentence_batches": 2,
                "tolerance": {"int8": {"min_cosine": 0.99999}, "fp16": {"max_abs": 1e-4, "min_cosine": 0.9999999}}})


def test_repair_makes_a_failing_conversion_pass_and_reports_what_stayed_in_float(tight_recipe: Path) -> None:
    main(["optimize", str(tight_recipe), "--no-bench"])
    report = json.loads(Path("artifacts/tight/report.json").read_text())
    verdicts = {a["name"]: a for a in report["artifacts"]}
    for plain, repaired in (("int8_plain", "int8_dynamic"),):
        assert not verdicts[plain]["parity"]["passed"], plain
        assert verdicts[repaired]["parity"]["passed"], verdicts[repaired]["parity"]["failures"]
        stats = verdicts[repaired]["stats"]["repair"]
        assert stats["passed"] and not stats["history"][0]["passed"] and any(h["passed"] for h in stats["history"])
        assert stats["kept_in_float"] and all({"node", "op_type"} <= set(k) for k in stats["kept_in_float"])
        assert stats["speed"]["p50_ms_plain"] > 0 and stats["speed"]["p50_ms_repaired"] > 0
        assert stats["localization"]["worst"][0]["node"]
    fp16 = verdicts["fp16"]["stats"]["repair"]  # repair ran: rounds, localisation, what stayed in float
    assert not verdicts["fp16_plain"]["parity"]["passed"] and len(fp16["history"]) > 1 and fp16["kept_in_float"]


def test_repair_is_off_by_the_recipe_switch(tight_recipe: Path) -> None:
    main(["optimize", str(tight_recipe), "--no-bench", "--set", "passes[1].int8_dynamic.repair=false"])
    report = json.loads(Path("artifacts/tight/report.json").read_text())
    int8 = next(a for a in report["artifacts"] if a["name"] == "int8_dynamic")
    assert "repair" not in int8["stats"] and not int8["parity"]["passed"]


def test_forward_selection_keeps_the_pair_that_only_passes_together(tiny_onnx, tmp_path: Path) -> None:
    """Harm measured node by node does not add up: the gate passes only with n4 and n6 both in
    float, neither of which ranks first alone. Forward selection with the gate finds the pair."""
    needed = {"n4", "n6"}
    built: list[list[str]] = []

    def convert(target: Path, kept: list[str]) -> None:  # every build is the parent itself
        built.append(kept)
        target.symlink_to(tiny_onnx.path)

    def gate(path: Path, precision: str) -> GateResult:
        found = len(needed & set(built[-1]))
        return GateResult(passed=found == 2, failures=[] if found == 2 else ["cos"], cos_min=0.9 + 0.04 * found,
                          max_abs=0.1)

    inputs = random_tokens(["input_ids", "attention_mask", "token_type_ids"], 1, 8, 1000)
    candidates = {f"n{i}": "MatMul" for i in range(1, 7)}
    with Builds(convert, tmp_path, "model.onnx") as builds:
        path, report = repair(Conversion(tiny_onnx.path, builds, candidates), GateCheck(gate, "int8", inputs, inputs),
                              ForwardSelection(), RepairBudget(max_kept=6, rounds=6, patience=2))
    assert report.passed and {row["node"] for row in report.kept} == needed
    assert [h["kept_in_float"] for h in report.history] == [0, 1, 2]
    assert len(report.localization["sensitivity"]) == len(candidates) and report.speed["p50_ms_repaired"] > 0
    assert len(built) == 1 + len(candidates) + 6 + 5  # the first, the ranking, two forward rounds
