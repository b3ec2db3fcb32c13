"""Any torch.nn.Module from a python factory goes through the chain, verification, benchmark and ship."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import main


class SmallCNN(torch.nn.Module):
    """A small convolutional network: 3x32x32 images to 10 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(pixels))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def small_cnn() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The factory a recipe names: a seeded module and example inputs."""
    torch.manual_seed(0)
    return SmallCNN(), {"pixels": torch.randn(2, 3, 32, 32)}


@pytest.fixture
def cnn_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cnn.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"factory": f"{__name__}:small_cnn"}, "task": "feature-extraction",
        "inputs": {"names": ["pixels"], "outputs": ["features"],
                   "dynamic_axes": {"pixels": {0: "batch"}, "features": {0: "batch"}}},
        "passes": [{"torchscript": {}}, {"onnx_export": {"from": "eager"}}, "onnx_simplify", "fp16",
                   {"int8_dynamic": {"from": "onnx_simplify"}}],
        "verify": {"tolerance": {"int8": {"min_cosine": 0.95}}},
        "bench": {"grid": "full", "batches": [1, 4], "seqs": [1], "min_seconds": 0.05, "min_repeats": 5,
                  "throughput_seconds": 0.05, "warmup_seconds": 0.01, "best_batch": {"seq": 1, "max_batch": 4},
                  "max_others_cpu": 1, "max_steal": 1, "max_baseline_spread": 1000},
        "ship": {"step": "onnx_simplify"},
    }))
    return path


@pytest.mark.slow  # a whole run with its benchmark: 12 to 17 s
def test_a_factory_module_goes_through_chain_verification_bench_and_ship(cnn_recipe: Path) -> None:
    assert main(["optimize", str(cnn_recipe)]) == 0
    report = json.loads(Path("artifacts/cnn/report.json").read_text())
    assert report["model"]["kind"] == "factory" and report["shipped_step"] == "onnx_simplify"
    for artifact in report["artifacts"]:
        assert artifact["parity"]["passed"], (artifact["step"], artifact["parity"]["failures"])
        cases = artifact["parity"]["cases"]["features"]
        assert {"example_b1", "example_b3"} <= set(cases)
        assert [(r["batch"], r["seq"]) for r in artifact["bench"]] == [(1, 1), (4, 1)]
    assert report["eager"]["bench"] and report["eager"]["real_data"] is None
    assert main(["ship", "--check", "artifacts/cnn/ship"]) == 0
    assert not Path("artifacts/cnn/ship/config.json").exists()
