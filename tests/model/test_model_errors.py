"""Damaged model files and factories that break their contract: each exits 2 with one line naming the file
or the factory, no traceback."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModel

from pipeline.cli import main
from pipeline.model.loading import packaged_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class Opaque:
    """An object torch's weights-only loader refuses to rebuild."""


class TinyNet(torch.nn.Module):
    """Four features to two."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> Path:
    """The tiny random BertModel saved as a model folder (config.json, model.safetensors)."""
    folder = tmp_path_factory.mktemp("saved") / "bert"
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(str(tiny_bert_config))).save_pretrained(folder)
    return folder


def _not_json(name: str) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        (folder / name).write_text("{not json")
    return corrupt


def _unknown_model_type(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')


def _broken_tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(packaged_path("all-MiniLM-L6-v2") / name, folder / name)
    (folder / "tokenizer.json").write_text("{not json")


def _bin_instead_of_safetensors(content: Callable[[Path], None]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        (folder / "model.safetensors").unlink()
        content(folder / "pytorch_model.bin")
    return corrupt


def _garbage(path: Path) -> None:
    path.write_bytes(b"garbage" * 100)


def _refused(path: Path) -> None:
    torch.save({"weight": torch.zeros(2), "extra": Opaque()}, path)


def _truncated_safetensors(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _safetensors_header_garbage(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00" * 8 + b"junk")


# (case id, damage done to the saved folder ./m, text the one line must contain)
FOLDER_CASES = [
    ("config-not-json", _not_json("config.json"), "model.source: ./m/config.json is not valid JSON ("),
    ("config-unknown-model-type", _unknown_model_type, "model.source: ./m/config.json is not a usable model config"),
    ("tokenizer-not-json", _broken_tokenizer, "model.source: ./m/tokenizer.json is not valid JSON ("),
    ("bin-garbage", _bin_instead_of_safetensors(_garbage), "model.source: cannot load ./m/pytorch_model.bin: "),
    ("bin-refused-by-weights-only", _bin_instead_of_safetensors(_refused),
     "model.source: cannot load ./m/pytorch_model.bin: "),
    ("safetensors-truncated", _truncated_safetensors, "model.source: cannot load ./m/model.safetensors: "),
    ("safetensors-garbage-header", _safetensors_header_garbage, "model.source: cannot load ./m/model.safetensors: "),
]


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The single "error: " line on stderr, after checking that nothing else went wrong there."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("damage", "expected"), [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_a_damaged_model_folder_exits_2_naming_the_file(damage: Callable[[Path], None], expected: str,
                                                        saved_bert: Path, write_tiny_recipe: Callable[..., Path],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(saved_bert, tmp_path / "m")
    damage(tmp_path / "m")
    recipe = write_tiny_recipe("damaged", ["onnx_export"], verify={"shapes": [[1, 9]]},
                               model={"source": "./m", "tokenizer": "packaged:all-MiniLM-L6-v2"})
    assert main(["optimize", str(recipe), "--no-bench"]) == 2
    assert expected in _one_error_line(capsys)


# -- factories --------------------------------------------------------------------------------
def a_class_not_a_module() -> tuple[type, dict[str, torch.Tensor]]:
    return TinyNet, {"x": torch.randn(2, 4)}


def inputs_as_a_list() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    return TinyNet(), [torch.randn(2, 4)]


def only_a_dict() -> dict[str, str]:
    return {"model": "TinyNet", "x": "inputs"}


def string_inputs() -> tuple[torch.nn.Module, dict[str, str]]:
    return TinyNet(), {"x": "four numbers"}


def text_array_inputs() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    return TinyNet(), {"x": np.array([["a", "b", "c", "d"]])}


def raises() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    raise RuntimeError("no weights here")


# (factory, text the one line must contain)
FACTORY_CASES = [
    ("os:system", "model.factory os:system: calling it raised TypeError: "),
    ("os:getcwd", "model.factory os:getcwd must return (torch.nn.Module, dict of example inputs), got str"),
    ("os:sep", "model.factory os:sep is not callable (it is a str)"),
    ("sys:exit", "model.factory sys:exit: calling it raised SystemExit"),
    (f"{__name__}:raises", f"model.factory {__name__}:raises: calling it raised RuntimeError: no weights here"),
    (f"{__name__}:a_class_not_a_module", "dict of example inputs), got (type, dict)"),
    (f"{__name__}:inputs_as_a_list", "dict of example inputs), got (TinyNet, list)"),
    (f"{__name__}:only_a_dict", "dict of example inputs), got dict"),
    (f"{__name__}:string_inputs",
     f"model.factory {__name__}:string_inputs: example input 'x' must be a tensor or a numeric array, got str"),
    (f"{__name__}:text_array_inputs", "example input 'x' must be a tensor or a numeric array, got ndarray (dtype <U1)"),
]


@pytest.mark.parametrize(("factory", "expected"), FACTORY_CASES, ids=[c[0] for c in FACTORY_CASES])
def test_a_factory_that_breaks_its_contract_exits_2(factory: str, expected: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "factory.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"factory": factory}, "task": "feature-extraction",
        "inputs": {"names": ["x"], "outputs": ["y"], "dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}},
        "passes": ["onnx_export"],
    }))
    assert main(["optimize", str(recipe), "--no-bench"]) == 2
    assert expected in _one_error_line(capsys)
