"""Recipe loading: strict keys with a hint, tasks, overrides, YAML errors, names, and the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
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


ROOT = Path(__file__).resolve().parents[2]


def readme_recipes() -> list[str]:
    """The recipe names in the first column of the README's table of recipes (under '## Recipes')."""
    text = (ROOT / "README.md").read_text().split("\n## Recipes\n", 1)[1]
    rows: list[str] = []
    for line in text.splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("| `"):
            rows.append(line.split("|")[1].strip().strip("`"))
        elif line.startswith("|"):
            rows.append("")  # the header and its rule
    return [name for name in rows if name]


def test_the_readme_table_lists_every_recipe_and_no_other() -> None:
    names = readme_recipes()
    assert len(names) == len(set(names)), names
    assert sorted(names) == sorted(path.stem for path in recipe_files(ROOT / "recipes"))


def test_every_recipe_and_matrix_has_a_one_line_description() -> None:
    for path in (ROOT / "recipes").glob("*.yaml"):
        description = yaml.safe_load(path.read_text()).get("description")
        assert isinstance(description, str) and description.strip(), path.name
        assert "\n" not in description.strip(), path.name
    bert_fp16 = load_recipe(ROOT / "recipes" / "bert_fp16.yaml").description
    assert "GPU" in bert_fp16 and "CPU" in bert_fp16, bert_fp16


def test_list_shows_each_recipe_with_its_description(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for path in (ROOT / "recipes").glob("*.yaml"):
        kind = "matrix" if path.name.startswith("matrix_") else "recipe"
        description = yaml.safe_load(path.read_text())["description"]
        assert any(line.split()[:2] == [kind, path.stem] and line.endswith(description) for line in lines), \
            (path.stem, lines)


def test_list_names_a_recipe_it_cannot_read_without_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "broken.yaml").write_text("model: [unclosed\n")
    (tmp_path / "recipes" / "plain.yaml").write_text("task: feature-extraction\n")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "recipe  broken" in out and "recipe  plain" in out
