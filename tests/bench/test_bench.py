"""Benchmarks end to end on the tiny BERT: worker processes, report rows, cache, device checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench.orchestrate import grid_points, grid_row, round_plans
from pipeline.bench.rounds import RoundPlan
from pipeline.cli import _overrides, _parser, main
from pipeline.recipe.schema import BenchSpec

# these tests are not about noise: a round that other processes (other tests) disturb still counts
NOISE_ALLOWED = ["--set", "bench.max_others_cpu=1", "--set", "bench.max_steal=1",
                 "--set", "bench.max_baseline_spread=1000"]
ROW = {"batch", "seq", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "peak_rss_mb"}
FAST = ["--set", "bench.min_seconds=0.05", "--set", "bench.min_repeats=5", "--set", "bench.throughput_seconds=0.05",
        "--set", "bench.warmup_seconds=0.01", "--set", "bench.best_batch.max_batch=4",
        "--set", "bench.best_batch.seq=16", "--set", "bench.real_data.max_length=32", "--set", "bench.rounds=3",
        "--set", "bench.pause_seconds=0.01", "--full-grid", *NOISE_ALLOWED]
NO_REAL_DATA = ["--set", "bench.real_data=null"]  # what a test does not look at, it does not wait for


@pytest.fixture
def tiny_recipe(write_tiny_recipe: Callable[..., Path]) -> Path:
    return write_tiny_recipe("tiny", [{"torchscript": {}}, {"onnx_export": {"from": "eager"}}],
                             verify={"shapes": [[1, 9]], "sentence_batches": 1},
                             bench={"batches": [1, 2], "seqs": [8, 16]})


@pytest.mark.slow  # a whole run with its benchmark: 12 to 17 s
def test_every_target_is_benchmarked_into_report_rows(tiny_recipe: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", str(tiny_recipe), *FAST]) == 0
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    targets = [report["eager"], *report["artifacts"]]
    for target in targets:
        assert [(r["batch"], r["seq"]) for r in target["bench"]] == [(1, 8), (1, 16), (2, 8), (2, 16)]
        for row in target["bench"]:
            assert ROW <= set(row) and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["throughput"] > 0
            assert row["tokens_per_s"] == pytest.approx(row["throughput"] * row["seq"])
        assert target["best_batch"]["batch"] in (1, 2, 4)
        real = target["real_data"]
        assert real["sentences"] == 278 and real["padded_sentences_per_s"] > 0 and real["sorted_sentences_per_s"] > 0
    env = report["bench_environment"]
    assert env["threads"] == 2 and env["inter_op_threads"] == 1 and env["cpu"] and "onnxruntime" in env["versions"]
    out = capsys.readouterr().out
    assert "p99" in out and "best batch" in out


@pytest.mark.slow  # a whole run with its benchmark: 12 to 17 s
def test_a_step_that_fails_its_gate_is_measured_at_one_point_without_extras(tiny_recipe: Path) -> None:
    fails = ["--set", "verify.steps.onnx_export.tolerance.max_abs=1e-30", *NO_REAL_DATA]
    main(["optimize", str(tiny_recipe), *FAST, *fails])
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    rows = {row["name"]: row for row in report["artifacts"]}
    assert rows["onnx_export"]["parity"]["passed"] is False and rows["torchscript"]["parity"]["passed"] is True
    assert [(r["batch"], r["seq"]) for r in rows["onnx_export"]["bench"]] == [(1, 8)]  # no ship point: the first
    assert rows["onnx_export"]["best_batch"] is None and len(rows["torchscript"]["bench"]) == 4
    assert {(r["batch"], r["seq"]) for r in report["ratios"] if r["target"] == "onnx_export"} == {(1, 8)}
    main(["optimize", str(tiny_recipe), *FAST, *fails, "--set", "bench.failed_steps=grid"])
    report = json.loads(Path("artifacts/tiny/report.json").read_text())
    assert len({row["name"]: row for row in report["artifacts"]}["onnx_export"]["bench"]) == 4


@pytest.mark.slow  # a whole run with its benchmark: 12 to 17 s
def test_optimize_reuses_bench_results_and_bench_remeasures(tiny_recipe: Path) -> None:
    default_grid = [arg for arg in FAST if arg != "--full-grid"]
    assert main(["optimize", str(tiny_recipe), *default_grid]) == 0
    first = json.loads(Path("artifacts/tiny/bench/eager.json").read_text())
    assert main(["optimize", str(tiny_recipe), *default_grid]) == 0
    assert json.loads(Path("artifacts/tiny/bench/eager.json").read_text()) == first
    assert main(["bench", str(tiny_recipe), *default_grid]) == 0
    again = json.loads(Path("artifacts/tiny/bench/eager.json").read_text())
    assert again["rows"] != first["rows"]
    assert all("p50_change_from_previous" in row for row in again["rows"])


def test_pad_batch_matches_the_tokenizer_padding_to_the_longest(tiny_ctx) -> None:
    from pipeline.bench.worker import pad_batch
    from pipeline.model.inputs import tokenize

    tokenizer = tiny_ctx.model.tokenizer
    texts = ["short one", "a much longer sentence than the first one", "mid length here"]
    names = tiny_ctx.io.input_names
    ours = pad_batch(tokenizer(texts), [0, 1, 2], names, tokenizer.pad_token_id)
    theirs = tokenize(tokenizer, texts, names)
    for name in names:
        assert np.array_equal(ours[name], theirs[name]), name


def test_the_ship_point_gets_the_ship_point_rounds_and_the_protocol_is_shared_out_over_them() -> None:
    spec = BenchSpec(batches=[1, 8], seqs=[16, 128], rounds=8, ship_point_rounds=24, min_repeats=48, min_seconds=2.4,
                     grid="full")
    plans = round_plans(spec, "cpu", ship_point=(1, 128))
    assert list(plans) == [(1, 16), (1, 128), (8, 16), (8, 128)]
    assert {point: plan.rounds for point, plan in plans.items()} == {(1, 16): 8, (1, 128): 24, (8, 16): 8, (8, 128): 8}
    assert plans[(1, 128)].block["min_repeats"] == 2 and plans[(1, 16)].block["min_repeats"] == 6
    assert plans[(1, 128)].block["min_seconds"] == pytest.approx(0.1)
    assert plans[(1, 128)].max_redo == 8 and plans[(1, 16)].max_redo == spec.redo_rounds == 3
    assert all(plan.rounds == 8 for plan in round_plans(spec, "cpu", ship_point=None).values())


def test_the_default_grid_is_batch_one_at_every_length_and_the_ship_point_and_full_is_one_flag_away() -> None:
    spec = BenchSpec(batches=[1, 8, 32], seqs=[16, 128])
    assert grid_points(spec, ship_point=(8, 128)) == [(1, 16), (1, 128), (8, 128)]
    assert grid_points(spec, ship_point=(1, 128)) == [(1, 16), (1, 128)]
    full = spec.model_copy(update={"grid": "full"})
    assert grid_points(full, ship_point=(8, 128)) == [(b, s) for b in (1, 8, 32) for s in (16, 128)]
    for command in ("optimize", "bench"):
        assert _overrides(_parser().parse_args([command, "r.yaml", "--full-grid"])) == ["bench.grid=full"]
        assert _overrides(_parser().parse_args([command, "r.yaml"])) == []


def _blocks(medians: list[float], spike: float = 1.0) -> list[dict]:
    """One block per round: nine calls at the round's median and one call ``spike`` times slower."""
    return [{"latencies_ms": [ms] * 9 + [ms * spike], "peak_rss_mb": 100.0} for ms in medians]


def test_a_row_is_unstable_when_its_median_moves_between_rounds_not_when_single_calls_spike() -> None:
    plan = RoundPlan(rounds=8, max_round_spread=0.10)
    spiky = grid_row(_blocks([10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 10.0, 10.1], spike=8.0), 1, 128, plan)
    assert spiky["cv"] > 0.5 and not spiky["unstable"] and spiky["unstable_reasons"] == []
    moving = grid_row(_blocks([10.0, 13.0, 10.0, 13.0, 10.0, 13.0, 10.0, 13.0]), 1, 128, plan)
    assert moving["unstable"] and moving["round_spread"] == pytest.approx(0.26, abs=0.01)
    assert "round medians spread 26%" in moving["unstable_reasons"][0]


def test_a_point_that_could_not_be_measured_marks_its_rows() -> None:
    row = grid_row(_blocks([10.0] * 4), 1, 8, RoundPlan(rounds=4), problem="every round was disturbed")
    assert row["measured"] is False and row["unstable"]
    assert row["unstable_reasons"] == ["not measured: every round was disturbed"]


def test_a_decode_step_counts_one_token_per_row_where_a_prefill_counts_its_sequence() -> None:
    blocks = [{"latencies_ms": [20.0] * 10, "peak_rss_mb": 100.0} for _ in range(4)]  # 50 calls per second
    prefill = grid_row(blocks, 4, 64, RoundPlan(rounds=4))
    decode = grid_row(blocks, 4, 64, RoundPlan(rounds=4), tokens_per_row=1)
    assert prefill["throughput"] == decode["throughput"] == pytest.approx(200.0)
    assert prefill["tokens_per_s"] == pytest.approx(200.0 * 64) and decode["tokens_per_s"] == pytest.approx(200.0)
