"""The repair's strategies and its budget, on fake builds (files that name the nodes they keep in float) and
fake gates, and on the tiny BERT where a strategy measures the model itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from passes.repair.budget import RepairBudget
from passes.repair.builds import Builds
from passes.repair.options import RepairOptions
from passes.repair.search import Conversion, GateCheck, Search, repair
from passes.repair.strategies import LocalizedGrowth, RankedGrowth, forward
from pipeline.core.artifact import Format
from pipeline.engine.pass_api import Gate, GateResult
from pipeline.model.inputs import Inputs, random_tokens

NODES = [f"n{i}" for i in range(1, 9)]  # the fake candidates, most harmful first
ROWS = [{"node": node, "op_type": "MatMul"} for node in NODES]


def write_kept(target: Path, kept: list[str]) -> None:
    """A fake build: the file names the nodes it keeps in float."""
    target.write_text(json.dumps(kept))


def gate_on(cos: Callable[[set[str]], float]) -> Gate:
    """A fake gate: a build's min cosine is ``cos`` of the nodes it keeps; 0.99 passes."""
    def gate(path: Path, precision: str) -> GateResult:
        value = cos(set(json.loads(path.read_text())))
        return GateResult(passed=value >= 0.99, failures=[] if value >= 0.99 else ["cos"], cos_min=value,
                          max_abs=0.1)
    return gate


def rank_fake(first: Path, parent: Path, probe: Inputs, candidates: set[str]) -> list[dict[str, str]]:
    """The fake ranking: the candidates in NODES' order."""
    return [row for row in ROWS if row["node"] in candidates]


def ranked_search(tmp_path: Path, cos: Callable[[set[str]], float], **limits: int) -> Search:
    """RankedGrowth run on fake builds of NODES (OpenVINO: nothing to localise) within ``limits``."""
    budget = RepairBudget(**{"max_kept": len(NODES), "rounds": 6, "patience": 2, **limits})
    with Builds(write_kept, tmp_path, "model.xml") as builds:
        conversion = Conversion(tmp_path / "parent.xml", builds, {node: "MatMul" for node in NODES}, Format.OPENVINO)
        search = Search.start(conversion, GateCheck(gate_on(cos), "int8", {}, {}), budget)
        RankedGrowth(rank_fake).run(search)
    return search


def kept_counts(history: list[dict[str, object]]) -> list[object]:
    """How many nodes each build the report lists kept in float."""
    return [h["kept_in_float"] for h in history]


def first_five(kept: set[str]) -> float:
    """Passes with n1..n5 all in float; each of them kept raises the cosine."""
    return 0.9 + 0.019 * len(kept & set(NODES[:5]))


def test_ranked_growth_keeps_more_in_rank_order_then_bisects_for_the_fewest(tmp_path: Path) -> None:
    search = ranked_search(tmp_path, first_five)
    assert search.verdict.passed and list(search.chosen) == NODES[:5]
    assert kept_counts(search.report.history) == [0, 1, 3, 7, 5, 4]  # 1, 3, 7 pass at 7; 5 passes, 4 does not
    assert search.report.localization["sensitivity"] == ROWS and search.report.stopped is None
    assert json.loads(search.path.read_text()) == NODES[:5]


def test_the_budget_s_rounds_end_the_growth(tmp_path: Path) -> None:
    search = ranked_search(tmp_path, lambda kept: 0.9 + 0.001 * len(kept), rounds=2)
    assert not search.verdict.passed and search.report.stopped is None
    assert kept_counts(search.report.history) == [0, 1, 3]


@pytest.mark.parametrize("patience", [1, 2])
def test_the_budget_s_patience_ends_a_growth_that_does_not_raise_the_cosine(tmp_path: Path, patience: int) -> None:
    search = ranked_search(tmp_path, lambda kept: 0.9, patience=patience)
    assert not search.verdict.passed and kept_counts(search.report.history) == [0, 1, 3][:patience + 1]
    assert search.report.stopped is not None and f"after {patience} rounds without progress" in search.report.stopped


def test_the_budget_s_max_kept_caps_the_nodes_in_float(tmp_path: Path) -> None:
    search = ranked_search(tmp_path, first_five, max_kept=2)
    assert not search.verdict.passed and list(search.chosen) == NODES[:2]
    assert kept_counts(search.report.history) == [0, 1, 2]


def test_forward_selection_tries_the_pool_for_the_greedy_rounds(tmp_path: Path) -> None:
    """Each round builds the ``greedy_pool`` most harmful not yet kept, keeps the best, for ``greedy_rounds``."""
    tried: list[list[str]] = []

    def convert(target: Path, kept: list[str]) -> None:
        tried.append(kept)
        write_kept(target, kept)

    budget = RepairBudget(max_kept=8, rounds=6, patience=2, greedy_pool=3, greedy_rounds=2)
    with Builds(convert, tmp_path, "model.xml") as builds:
        conversion = Conversion(tmp_path / "parent.xml", builds, {node: "MatMul" for node in NODES}, Format.OPENVINO)
        search = Search.start(conversion, GateCheck(gate_on(lambda kept: 0.9 + 0.01 * ("n2" in kept)), "int8",
                                                    {}, {}), budget)
        forward(search, ROWS)
    assert tried == [[], ["n1"], ["n2"], ["n3"], ["n2", "n1"], ["n2", "n3"], ["n2", "n4"]]
    assert list(search.chosen) == ["n2", "n1"] and kept_counts(search.report.history) == [0, 1, 2]


def test_budget_from_the_pass_options() -> None:
    options = RepairOptions(repair=True, repair_rounds=3, repair_patience=1, repair_max_fraction=0.25)
    assert RepairBudget.from_options(options, 10) == RepairBudget(max_kept=2, rounds=3, patience=1)
    assert RepairBudget.from_options(options, 3).max_kept == 1  # at least one node may stay in float


def test_a_conversion_that_passes_at_once_is_not_searched(tmp_path: Path) -> None:
    class Unused:
        def run(self, search: Search) -> None:
            raise AssertionError("no search when the first build passes")

    with Builds(write_kept, tmp_path, "model.xml") as builds:
        conversion = Conversion(tmp_path / "parent.xml", builds, {"n1": "MatMul"}, Format.OPENVINO)
        path, report = repair(conversion, GateCheck(gate_on(lambda kept: 1.0), "int8", {}, {}), Unused(),
                              RepairBudget(max_kept=1, rounds=6, patience=2))
    assert report.passed and json.loads(path.read_text()) == [] and kept_counts(report.history) == [0]
    assert report.speed == {} and report.kept == []


def test_localized_growth_keeps_the_node_that_adds_the_error(tiny_onnx, changed_matmul: tuple[str, Path],
                                                             tmp_path: Path) -> None:
    """A build changes one MatMul's weight unless that node is kept: localised, it ranks first and is kept."""
    target, broken = changed_matmul

    def convert(out: Path, kept: list[str]) -> None:
        out.symlink_to(tiny_onnx.path if target in kept else broken)

    def gate(path: Path, precision: str) -> GateResult:
        repaired = path.resolve() == tiny_onnx.path.resolve()
        return GateResult(passed=repaired, failures=[] if repaired else ["cos"], cos_min=1.0 if repaired else 0.9,
                          max_abs=0.1)

    inputs = random_tokens(["input_ids", "attention_mask", "token_type_ids"], 1, 8, 1000)
    candidates = {node.name: node.op_type for node in onnx.load(str(tiny_onnx.path)).graph.node}
    with Builds(convert, tmp_path, "model.onnx") as builds:
        path, report = repair(Conversion(tiny_onnx.path, builds, candidates), GateCheck(gate, "fp16", inputs, inputs),
                              LocalizedGrowth(), RepairBudget(max_kept=len(candidates), rounds=6, patience=2))
    assert report.passed and [row["node"] for row in report.kept] == [target]
    assert kept_counts(report.history) == [0, 1] and report.localization["worst"][0]["node"] == target
    assert path.resolve() == tiny_onnx.path.resolve() and report.speed["p50_ms_repaired"] > 0
