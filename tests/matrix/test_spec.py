"""Matrix files: how cells are expanded and named, and the one-line refusals of a bad file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

import pipeline.matrix.spec as spec_module
from pipeline.core.errors import RecipeError
from pipeline.matrix.spec import MAX_CELLS, cell_count, cells, load_matrix


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_cells_are_every_model_with_one_label_of_every_axis(tmp_path: Path) -> None:
    spec = load_matrix(write(tmp_path, {
        "name": "demo", "recipe": "recipes/a.yaml", "set": {"bench.rounds": 4},
        "axes": {"threads": {"t1": {"bench.threads": 1}, "t2": {"bench.threads": 2}}},
        "models": {"minilm": {"axes": {"int8": {"pc": {"passes[2].int8_dynamic.per_channel": True},
                                                "pt": {"passes[2].int8_dynamic.per_channel": False}}}},
                   "bert": {"recipe": "recipes/b.yaml", "set": {"model.weights": "random"}}},
    }))
    made = cells(spec)
    assert [c.name for c in made] == ["minilm-t1-pc", "minilm-t1-pt", "minilm-t2-pc", "minilm-t2-pt",
                                      "bert-t1", "bert-t2"]
    first = made[0]
    assert first.recipe == Path("recipes/a.yaml") and dict(first.labels) == {"threads": "t1", "int8": "pc"}
    assert first.overrides == ("bench.rounds=4", "bench.threads=1", "passes[2].int8_dynamic.per_channel=true")
    assert made[4].recipe == Path("recipes/b.yaml") and 'model.weights="random"' in made[4].overrides


def test_recipes_is_the_short_form_of_one_model_per_recipe(tmp_path: Path) -> None:
    spec = load_matrix(write(tmp_path, {"recipes": ["recipes/a.yaml", "recipes/b.yaml"]}))
    assert spec.name == "m" and [c.name for c in cells(spec)] == ["a", "b"]


@pytest.mark.parametrize(("body", "message"), [
    ({"models": {}}, "the matrix has no cells"),
    ({"models": {"a": {}}}, "models.a: names no recipe"),
    ({"recipe": "r.yaml", "models": {"a": {"recipes": "x"}}}, "recipes"),
    ({"recipe": "r.yaml", "models": {"a b": {}}}, "'a b' must be letters"),
    ({"recipe": "r.yaml", "models": {"a": {}}, "axes": {"x": {}}}, "axis 'x' has no labels"),
    ({"recipe": "r.yaml", "models": {"a": {}}, "compare": "everything"}, "compare"),
    ({"recipe": "r.yaml", "models": {"a-x": {}, "a": {"axes": {"k": {"x": {}}}}}}, "come out twice"),
    ({"recipe": "r.yaml", "models": {"a": {}}, "resources": {"build_cpus": 0}}, "build_cpus"),
])
def test_a_bad_matrix_file_is_one_line_naming_the_key(tmp_path: Path, body: dict, message: str) -> None:
    with pytest.raises(RecipeError, match="matrix .*m.yaml") as caught:
        load_matrix(write(tmp_path, body))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_or_broken_matrix_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such file"):
        load_matrix(tmp_path / "absent.yaml")
    (tmp_path / "m.yaml").write_text("models: [\n")
    with pytest.raises(RecipeError, match=r"m.yaml line \d"):
        load_matrix(tmp_path / "m.yaml")


def axes_of(count: int, labels: int) -> dict:
    return {f"axis{a}": {f"l{i}": {f"bench.k{a}": i} for i in range(labels)} for a in range(count)}


def test_a_matrix_of_too_many_cells_is_refused_before_it_is_expanded(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def never(_: object) -> list:
        raise AssertionError("the cells were expanded")

    monkeypatch.setattr(spec_module, "cells", never)
    path = write(tmp_path, {"recipe": "r.yaml", "models": {"a": {}}, "axes": axes_of(6, 20)})
    assert path.stat().st_size < 8000
    begin = time.perf_counter()
    with pytest.raises(RecipeError, match=r"matrix .*m.yaml: 64000000 cells, more than the 1000") as caught:
        load_matrix(path)
    assert time.perf_counter() - begin < 5 and "\n" not in str(caught.value)


def test_a_matrix_of_max_cells_is_taken(tmp_path: Path) -> None:
    path = write(tmp_path, {"recipe": "r.yaml", "models": {"a": {}}, "axes": axes_of(3, 10)})
    assert MAX_CELLS == 1000 and cell_count(load_matrix(path)) == 1000 == len(cells(load_matrix(path)))
    with pytest.raises(RecipeError, match="1001 cells"):
        load_matrix(write(tmp_path, {"recipe": "r.yaml", "models": {"a": {"axes": axes_of(3, 10)}, "b": {}}}))


def test_expanding_cells_takes_time_in_proportion_to_their_number(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "MAX_CELLS", 40_000)
    path = write(tmp_path, {"recipe": "r.yaml", "models": {"a": {}}, "axes": axes_of(4, 13)})  # 28,561 cells
    begin = time.perf_counter()
    assert len(cells(load_matrix(path))) == 13 ** 4
    assert time.perf_counter() - begin < 5
