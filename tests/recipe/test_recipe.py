"""Recipe loading: strict keys with a hint, tasks, overrides, YAML errors, names, and the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.errors import RecipeError
from pipeline.engine.chain import build_steps
from pipeline.recipe.load import apply_override, load_recipe, parse_recipe, recipe_files

BASE = {"model": {"source": "packaged:all-MiniLM-L6-v2"}, "task": "feature-extraction"}


def recipe(passes: list, **extra: object):
    return parse_recipe({**BASE, "passes": passes, **extra}, "r")



def test_unknown_top_level_and_nested_keys() -> None:
    with pytest.raises(RecipeError, match=r"^modle: unknown key; did you mean model\?"):
        parse_recipe({**BASE, "modle": {}, "passes": ["onnx_export"]}, "r")
    with pytest.raises(RecipeError, match=r"^verify\.tolerance\.fp16\.max_ab: unknown key; did you mean max_abs\?"):
        recipe(["onnx_export"], verify={"tolerance": {"fp16": {"max_ab": 1, "min_cosine": 0.9}}})


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(RecipeError, match="unknown task 'translation' .known: feature-extraction, text-classification"):
        parse_recipe({**BASE, "task": "translation", "passes": ["onnx_export"]}, "r")







def test_override_sets_nested_values_and_steps(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({**BASE, "passes": ["onnx_export", "fp16"]}))
    r = load_recipe(path, ["passes[1].fp16.keep_io_types=false", "model.weights=random", "bench.batches=[1,2]",
                           "inputs.export_seq=32"])
    assert r.model.weights == "random" and r.bench.batches == [1, 2] and r.inputs.export_seq == 32
    assert build_steps(r)[1].config.keep_io_types is False
    assert r.name == "r"


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(RecipeError, match="expected key=value"):
        apply_override({}, "model.weights")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  source: [unclosed\ntask: x\n")
    with pytest.raises(RecipeError, match=r"recipe .*bad.yaml line \d+"):
        load_recipe(path)


def test_name_that_climbs_out_is_rejected() -> None:
    with pytest.raises(RecipeError, match="^name: '../evil'"):
        parse_recipe({**BASE, "name": "../evil", "passes": ["onnx_export"]}, "r")



def test_shipped_recipes_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # recipes name files relative to the project folder
    paths = recipe_files(root / "recipes")
    assert {"minilm", "bert_fp16", "gpt2_fp16"} <= {path.stem for path in paths}
    for path in paths:
        build_steps(load_recipe(path))
