"""End to end on the real SmolLM2-135M-Instruct (from its GGUF file): the recipe's export, its 4-bit weights
stored on the file's own grid, and its 8-bit weights quantized again, judged by the token gate against eager
``generate``: the grid's 4-bit weights keep every token and ship, the 8-bit ones miss the int8 gate's 99% of
tokens and do not; the report says where the weights came from, and the generation benchmark (which loads the
tokenizer from the GGUF file in its own process) gives tokens/s. The recipe's prompts are cut to 48 and its
benchmark to one short point, so that the test takes minutes, not the recipe's eight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KEPT_STEPS = ("onnx_export", "ort_grid4", "ort_int8")


def _name(entry: dict[str, dict[str, object]]) -> str:
    pass_name, options = next(iter(entry.items()))
    return str((options or {}).get("name", pass_name))


def test_smollm2_ships_4_bit_weights_that_keep_every_token(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from pipeline.core.errors import ModelError
    from pipeline.model.spec import packaged_path

    try:
        gguf = packaged_path("SmolLM2-135M-Instruct")
    except ModelError as exc:
        pytest.skip(str(exc))
    if not gguf.is_file():
        pytest.skip(f"{gguf} is not installed")
    recipe = yaml.safe_load((ROOT / "recipes" / "smollm2.yaml").read_text())
    recipe["passes"] = [entry for entry in recipe["passes"] if _name(entry) in KEPT_STEPS]
    recipe["verify"]["generation"]["prompts"] = 48
    recipe["bench"] = {**recipe["bench"], "batches": [1], "seqs": [16], "rounds": 2, "min_repeats": 3,
                       "min_seconds": 0.1, "max_seconds": 1.0, "generation": {"new_tokens": 4, "repeats": 1}}
    recipe["ship"] = {"fastest_at": [1, 16]}
    path = tmp_path / "smollm2_e2e.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "pipeline", "optimize", str(path), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1500,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["gguf_weights"] == "Q4_1"
    rows = {row["name"]: row for row in report["artifacts"]}
    for name in KEPT_STEPS:
        generation = rows[name]["parity"]["generation"]
        assert generation["sequences"] == 48 and generation["new_tokens"] == 32
        assert rows[name]["parity"]["perplexity"]["tokens"] > 500
    for name in ("onnx_export", "ort_grid4"):  # every token a user sees, and eager's perplexity
        parity = rows[name]["parity"]
        assert parity["passed"], (name, parity["failures"])
        assert parity["generation"]["share"] == 1.0 and abs(parity["perplexity"]["increase"]) < 1e-4
    assert rows["ort_grid4"]["precision"] == "int4"
    assert rows["ort_grid4"]["stats"]["grid"] == {"exact": 210, "asymmetric": 210, "requantized": []}
    int8 = rows["ort_int8"]["parity"]
    assert not int8["passed"] and any(f.startswith("token match") for f in int8["failures"])
    assert report["shipped_step"] == "ort_grid4"
    for timed in (rows["ort_grid4"], report["eager"]):  # the generation benchmark ran in its own process
        assert timed["generation"][0]["tokens_per_s"] > 0, timed.get("bench_error")
    markdown = (out / "report.md").read_text()
    assert "GGUF Q4_1 file" in markdown and "Greedy generation and perplexity against eager" in markdown
