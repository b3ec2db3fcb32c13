"""The gpt2_fp32 recipe end to end on a tiny GPT-2: gate, greedy tokens, the generation table in every report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

RECIPE = Path(__file__).parent.parent / "recipes" / "gpt2_fp32.yaml"


@pytest.mark.slow
def test_gpt2_recipe_on_a_tiny_config_passes_generates_eagers_tokens_and_reports_speed(
        tiny_gpt2_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code = main(["optimize", str(RECIPE), "--out", str(out), "--set", f"model.source={tiny_gpt2_config}",
                 "--set", "verify.generation.prompts=24", "--set", "bench.batches=[1, 2]", "--set", "bench.seqs=[8]",
                 "--set", "bench.generation.new_tokens=4", "--set", "bench.min_seconds=0.05",
                 "--set", "bench.min_repeats=3", "--set", "bench.warmup_seconds=0.01",
                 "--set", "bench.throughput_seconds=0.05", "--set", "bench.generation.repeats=2", "--full-grid",
                 "--set", "bench.max_others_cpu=1", "--set", "bench.max_steal=1",
                 "--set", "bench.max_baseline_spread=1000"])
    console = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "text-generation" and report["shipped_step"] == "ort_optimize"
    for artifact in report["artifacts"]:
        parity = artifact["parity"]
        assert parity["passed"], parity["failures"]
        assert {"decode_1", "decode_4", "sentences_0", "random_b3_s37"} <= set(parity["cases"]["logits"])
        assert parity["metrics"]["logits"]["max_abs"] < 1e-4
        assert "present.1.value" in parity["metrics"]
        generation = parity["generation"]
        assert generation["matched"] == generation["tokens"] == 24 * 8
        rows = artifact["generation"]
        assert [(r["batch"], r["prompt_tokens"], r["new_tokens"]) for r in rows] == [(1, 8, 4), (2, 8, 4)]
        assert all(0 < r["ttft_p50_ms"] <= r["ttft_p90_ms"] and 0 < r["token_p50_ms"] <= r["token_p90_ms"]
                   and r["tokens_per_s"] > 0 for r in rows)
    assert len(report["eager"]["generation"]) == 2
    markdown = (out / "report.md").read_text()
    assert "## Generation speed" in markdown and "192/192" in markdown
    assert "greedy generation" in console and "TTFT p50 ms" in console
    assert any(line.startswith("| ort_optimize | 2 | 8 | 4 |") for line in markdown.splitlines()), markdown
