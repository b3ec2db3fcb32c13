"""Unbounded input is refused in prepare: each case exits 2 with one line naming the file or key, quickly,
and writes nothing under artifacts/."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.model.loading import ModelHandle
from pipeline.recipe.load import load_recipe, recipe_files
from pipeline.verify.reference import check_shape_limits

GIB = 1 << 30
RECIPES = Path(__file__).parents[2] / "recipes"
WriteRecipe = Callable[..., Path]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def memory_16_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run sees 16 GiB of available memory, whatever the machine has."""
    monkeypatch.setattr("pipeline.core.limits.available_memory", lambda: 16 * GIB)


@pytest.fixture
def write_recipe(write_tiny_recipe: WriteRecipe) -> WriteRecipe:
    """The tiny-BERT recipe writer, with one verify shape within the tiny model's 128 positions."""
    def write(name: str, passes: list, verify: dict | None = None, **sections: object) -> Path:
        return write_tiny_recipe(name, passes, verify={"shapes": [[1, 9]], **(verify or {})}, **sections)
    return write


def refused(args: list[str], capsys: pytest.CaptureFixture, folder: Path) -> str:
    """Run ``optimize`` with ``args``; assert exit 2, one 'error: ' line and no artifacts/; return the line."""
    code = main(["optimize", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert not (folder / "artifacts").exists()
    return err[0]


def billion_laughs(levels: int = 9) -> str:
    """A flow mapping of nested anchors, each ten aliases of the one before (10**levels strings)."""
    items = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


# -- the recipe -------------------------------------------------------------------------------
def test_recipe_larger_than_the_limit(write_recipe: WriteRecipe, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe("big", ["onnx_export"])
    with recipe.open("a") as handle:
        handle.write(("# padding\n" * 1000) * 210)  # 2.1 MB of comments
    line = refused([str(recipe)], capsys, tmp_path)
    assert "recipe " in line and "big.yaml" in line and "more than the 1 MiB limit" in line


@pytest.mark.parametrize("kind", ["folder", "fifo", "/dev/zero"])
def test_recipe_that_is_not_a_regular_file(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path(kind) if kind.startswith("/") else tmp_path / f"{kind}.yaml"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    line = refused([str(path)], capsys, tmp_path)
    expected = {"folder": "a folder", "fifo": "a FIFO", "/dev/zero": "a character device"}[kind]
    assert line == f"error: recipe {path}: not a regular file ({expected})"


def test_alias_bomb_in_the_recipe(write_recipe: WriteRecipe, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe("bomb", ["onnx_export"])
    with recipe.open("a") as handle:
        handle.write(f"description: {billion_laughs()}\n")
    line = refused([str(recipe)], capsys, tmp_path)
    assert line.startswith(f"error: recipe {recipe}: YAML aliases expand to more than 100000 nodes"), line


def test_recursive_alias_in_the_recipe(write_recipe: WriteRecipe, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe("loop", ["onnx_export"])
    text = recipe.read_text().replace("passes:\n- onnx_export\n", "passes: &steps [onnx_export, *steps]\n")
    assert "*steps" in text
    recipe.write_text(text)
    line = refused([str(recipe)], capsys, tmp_path)
    assert re.match(rf"error: recipe {re.escape(str(recipe))} line \d+: a YAML alias refers to a node that "
                    r"contains it \(a recursive alias\)$", line), line


def test_alias_bomb_in_a_set_value(write_recipe: WriteRecipe, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe("tiny", ["onnx_export"])
    line = refused([str(recipe), "--set", f"description={billion_laughs()}"], capsys, tmp_path)
    assert line.startswith("error: --set 'description={a0: &a0") and "YAML aliases expand to more than" in line


# -- sentence files ---------------------------------------------------------------------------
def test_sparse_1_gb_corpus_is_refused_quickly(write_recipe: WriteRecipe, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    with open(tmp_path / "big.txt", "wb") as handle:
        handle.truncate(1 << 30)
    recipe = write_recipe("tiny", ["onnx_export"], inputs={"corpus": "big.txt"})
    start = time.perf_counter()
    line = refused([str(recipe)], capsys, tmp_path)
    assert time.perf_counter() - start < 10
    assert line.startswith("error: inputs.corpus: ") and "big.txt: 1,073,741,824 bytes, more than the 64 MiB" in line


@pytest.mark.parametrize(("content", "problem"), [(b"a sentence\nna\xefve caf\xe9\n", "byte 0xef at column 3"),
                                                   (b"a sentence\nan\x00other\n", "a NUL byte")],
                         ids=["latin-1", "nul-byte"])
def test_corpus_that_is_not_utf8_text(content: bytes, problem: str, write_recipe: WriteRecipe,
                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.txt").write_bytes(content)
    recipe = write_recipe("tiny", ["onnx_export"], inputs={"corpus": "bad.txt"})
    line = refused([str(recipe)], capsys, tmp_path)
    assert line == f"error: inputs.corpus: {tmp_path / 'bad.txt'} line 2: binary or not UTF-8 text ({problem})"


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_corpus_that_is_not_a_regular_file(kind: str, write_recipe: WriteRecipe, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo.txt")
    corpus = "fifo.txt" if kind == "fifo" else kind
    recipe = write_recipe("tiny", ["onnx_export"], inputs={"corpus": corpus})
    line = refused([str(recipe)], capsys, tmp_path)
    assert line.startswith("error: inputs.corpus: ") and corpus in line and "not a regular file" in line


def test_corpus_with_too_many_sentences(write_recipe: WriteRecipe, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "many.txt").write_text("a short sentence\n" * 100_001)
    recipe = write_recipe("tiny", ["onnx_export"], inputs={"corpus": "many.txt"})
    line = refused([str(recipe)], capsys, tmp_path)
    assert line.startswith("error: inputs.corpus: ") and "many.txt: more than 100,000 sentences" in line


@pytest.mark.parametrize(("step", "key"), [({"int8_static": {"calibration": "cal.txt"}}, "int8_static.calibration"),
                                           ({"int8_dynamic": {"smooth": True, "calibration": "cal.txt"}},
                                            "int8_dynamic.calibration")], ids=["int8_static", "int8_dynamic"])
def test_calibration_file_that_is_binary(step: dict, key: str, write_recipe: WriteRecipe, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "cal.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    recipe = write_recipe("tiny", ["onnx_export", step])
    line = refused([str(recipe)], capsys, tmp_path)
    assert line == f"error: {key}: {tmp_path / 'cal.txt'} line 1: binary or not UTF-8 text (byte 0x89 at column 1)"


def test_accuracy_file_that_is_binary(write_recipe: WriteRecipe, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "labels.csv").write_bytes(b"text,label\ngood,1\n\xff\xfe\x00b\x00a\x00d,0\n")
    recipe = write_recipe("tiny", ["onnx_export"], verify={"accuracy": {"file": "labels.csv"}},
                          task="text-classification")
    line = refused([str(recipe)], capsys, tmp_path)
    assert line == "error: verify.accuracy.file: labels.csv line 3: binary or not UTF-8 text (a NUL byte)"


# -- shapes against memory --------------------------------------------------------------------
def test_verify_shape_that_would_exhaust_memory(memory_16_gib: None, write_recipe: WriteRecipe,
                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe("tiny", ["onnx_export"], verify={"shapes": [[100000, 8]]})
    line = refused([str(recipe)], capsys, tmp_path)
    assert re.match(r"error: verify\.shapes\[0\]: batch 100000 x sequence 8 needs about \d+\.\d GiB, more than "
                    r"the 8\.0 GiB this run may use \(50% of the 16\.0 GiB available\)$", line), line


def test_bench_grid_that_would_exhaust_memory(memory_16_gib: None, write_recipe: WriteRecipe,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe("tiny", ["onnx_export"], bench={"batches": [1, 4096], "seqs": [16, 128]})
    line = refused([str(recipe)], capsys, tmp_path)
    assert line.startswith("error: bench.batches x bench.seqs: batch 4096 x sequence 128 needs about "), line


def small_mlp() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A factory model: no config to estimate its memory from."""
    return torch.nn.Linear(4, 2), {"features": torch.zeros(2, 4)}


def test_factory_model_shape_over_the_token_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "mlp.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"factory": f"{__name__}:small_mlp"}, "task": "feature-extraction",
        "inputs": {"names": ["features"], "outputs": ["out"], "dynamic_axes": {"features": {0: "batch"}}},
        "passes": ["onnx_export"], "bench": {"batches": [4096], "seqs": [128]},
    }))
    line = refused([str(recipe)], capsys, tmp_path)
    assert line.startswith("error: bench.batches x bench.seqs: batch 4096 x sequence 128 is 524,288 tokens in one "
                           "call, more than the 262,144 allowed"), line


@pytest.mark.parametrize("path", recipe_files(RECIPES), ids=lambda p: p.stem)
def test_shipped_recipes_fit_a_24_gib_machine(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.core.limits.available_memory", lambda: 22 * GIB)
    monkeypatch.chdir(RECIPES.parent)
    recipe = load_recipe(path, ["model.weights=random"])
    check_shape_limits(recipe, ModelHandle(recipe.model, recipe.task, recipe.inputs.names, recipe.output_names))
