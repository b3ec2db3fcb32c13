"""A recipe ending in ov_weight_int8 ships an IR whose bundle manifest states the dynamic quantization group size
in its ``openvino_config``, and optimum-intel (``.venv-intel``, slow) loads it with that ov_config and matches
eager within the int8 tolerance, and this project's own run of the same IR."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
pytest.importorskip("nncf", reason="NNCF is not installed (the openvino extra)")

from passes._support.ov_weights import GROUP_OPTION, runtime_options  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.runtime.sessions import OPENVINO_CONFIG  # noqa: E402
from pipeline.verify.metrics import compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
INTEL_PYTHON = ROOT / ".venv-intel" / "bin" / "python"
INTEL_READY = ROOT / ".venv-intel" / ".installed"  # `make intel-env` writes it once the environment is whole
INTEL_RUNNER = Path(__file__).with_name("intel_run_outputs.py")
OUT = Path("artifacts/w8")


def _optimize(write_tiny_recipe: Callable[..., Path]) -> dict:
    """Run the tiny recipe (openvino_convert from eager, then ov_weight_int8) and return the bundle's manifest."""
    recipe = write_tiny_recipe("w8", ["openvino_convert", {"ov_weight_int8": {}}],
                               verify={"shapes": [[1, 9], [3, 77]], "sentence_batches": 1})
    assert main(["optimize", str(recipe), "--no-bench"]) == 0
    return json.loads((OUT / "ship" / "manifest.json").read_text())


def test_the_bundle_states_the_group_size_its_ir_carries(write_tiny_recipe: Callable[..., Path]) -> None:
    import openvino as ov

    manifest = _optimize(write_tiny_recipe)
    step = json.loads((OUT / "02_ov_weight_int8" / "manifest.json").read_text())
    group = str(step["stats"]["group_size"])
    assert manifest["name"] == "ov_weight_int8" and manifest["precision"] == "int8"
    assert manifest["openvino_config"] == {**OPENVINO_CONFIG, GROUP_OPTION: group}
    assert runtime_options(ov.Core().read_model(str(OUT / "ship" / manifest["model_file"]))) == {GROUP_OPTION: group}
    assert manifest["parity"]["passed"] and step["stats"]["choice"]["passed"]
    assert set(step["stats"]["choice"]["by_size"]) == {"64", "32"}
    assert main(["ship", "--check", str(OUT / "ship")]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not (INTEL_PYTHON.exists() and INTEL_READY.exists()),
                    reason=f"no optimum-intel environment at {INTEL_PYTHON} (build it with `make intel-env`)")
def test_optimum_intel_runs_the_bundle_with_its_ov_config(write_tiny_recipe: Callable[..., Path],
                                                          tmp_path: Path) -> None:
    from pipeline.runtime.backends import OvBackend
    from pipeline.runtime.runner import as_function

    manifest = _optimize(write_tiny_recipe)
    cases, got = tmp_path / "cases.npz", tmp_path / "intel.npz"
    with np.load(OUT / "reference" / "reference.npz") as data:
        reference = {key: data[key] for key in data.files}
    np.savez(cases, **reference)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run([str(INTEL_PYTHON), str(INTEL_RUNNER), str(OUT / "ship"), str(cases), str(got)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ran["group_size"] in (None, manifest["openvino_config"][GROUP_OPTION]), ran
    ours = as_function(OvBackend(OUT / "ship" / manifest["model_file"], "cpu", None), ["last_hidden_state"])
    with np.load(got) as outputs:
        assert ran["cases"] == len(outputs.files) > 0
        for key in outputs.files:
            case = key.split("/")[0]
            inputs = {name.split("/")[2]: value for name, value in reference.items()
                      if name.startswith(f"{case}/inputs/")}
            mask = inputs["attention_mask"]
            assert compare(reference[f"{case}/outputs/last_hidden_state"], outputs[key], mask)["cos_min"] > 0.99
            assert compare(ours(inputs)["last_hidden_state"], outputs[key], mask)["max_abs"] <= 1e-4, case
