"""End to end on the real SmolLM2-135M-Instruct (from its GGUF file): the recipe's export and its 8-bit
weight steps for both runtimes, judged by the token gate against eager ``generate``; a weight-quantized
artifact ships, and the report says where the weights came from. The recipe's own prompts are cut to 48
and its benchmark left out, so that the test takes minutes, not the recipe's ten."""

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
KEPT_STEPS = ("onnx_export", "ort_int8", "openvino_convert", "ov_int8")


def _name(entry: dict[str, dict[str, object]]) -> str:
    pass_name, options = next(iter(entry.items()))
    return str((options or {}).get("name", pass_name))


def test_smollm2_ships_int8_weights_that_pass_the_token_gate(tmp_path: Path) -> None:
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
    recipe["bench"] = {"enabled": False}
    recipe["ship"] = {"step": "ov_int8"}
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
        parity = rows[name]["parity"]
        assert parity["passed"], (name, parity["failures"])
        generation, perplexity = parity["generation"], parity["perplexity"]
        assert generation["sequences"] == 48 and generation["new_tokens"] == 32
        assert perplexity["tokens"] > 500 and perplexity["increase"] <= parity["tolerance"]["logits"][
            "max_perplexity_increase"]
    assert rows["onnx_export"]["parity"]["generation"]["share"] == 1.0  # fp32: every token a user sees
    assert rows["ov_int8"]["precision"] == "int8" and rows["ort_int8"]["precision"] == "int8"
    assert report["shipped_step"] == "ov_int8"
    markdown = (out / "report.md").read_text()
    assert "GGUF Q4_1 file" in markdown and "Greedy generation and perplexity against eager" in markdown
