"""The chain of a recipe: each step's pass and options checked against the registry, the order of formats,
``from`` and step names, and the JSON Schema with every pass's options."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import RecipeError
from pipeline.engine.chain import build_steps, json_schema
from pipeline.recipe.load import parse_recipe

BASE = {"model": {"source": "packaged:all-MiniLM-L6-v2"}, "task": "feature-extraction"}


def recipe(passes: list, **extra: object):
    return parse_recipe({**BASE, "passes": passes, **extra}, "r")


def test_unknown_pass_option_names_path_and_nearest_key() -> None:
    r = recipe(["onnx_export", "onnx_simplify", {"fp16": {"keep_io_type": True}}])
    expected = r"^passes\[2\]\.fp16\.keep_io_type: unknown key; did you mean keep_io_types\?$"
    with pytest.raises(RecipeError, match=expected):
        build_steps(r)


def test_unknown_pass_lists_known_ones() -> None:
    with pytest.raises(RecipeError, match=r"passes\[0\]: unknown pass 'onnx_exprt'; did you mean onnx_export\?"):
        build_steps(recipe(["onnx_exprt"]))


def test_chain_in_wrong_order_is_rejected() -> None:
    with pytest.raises(RecipeError, match=r"passes\[0\]\.fp16: reads onnx, but 'eager' produces eager"):
        build_steps(recipe(["fp16", "onnx_export"]))


def test_from_names_an_earlier_step() -> None:
    steps = build_steps(recipe(["torchscript", {"onnx_export": {"from": "eager"}}, "onnx_simplify",
                                {"fp16": {"from": "onnx_export"}}]))
    assert [(s.folder, s.source) for s in steps] == [
        ("01_torchscript", "eager"), ("02_onnx_export", "eager"), ("03_onnx_simplify", "onnx_export"),
        ("04_fp16", "onnx_export")]
    with pytest.raises(RecipeError, match=r"passes\[1\]\.fp16\.from: no earlier step 'later'"):
        build_steps(recipe(["onnx_export", {"fp16": {"from": "later"}}]))


def test_duplicate_step_needs_a_name() -> None:
    with pytest.raises(RecipeError, match="give this one a name"):
        build_steps(recipe(["onnx_export", "fp16", {"fp16": {"from": "onnx_export"}}]))
    steps = build_steps(recipe(["onnx_export", "fp16", {"fp16": {"from": "onnx_export", "name": "fp16_all",
                                                                  "keep_io_types": False}}]))
    assert steps[-1].folder == "03_fp16_all"


def test_empty_chain_is_rejected() -> None:
    with pytest.raises(RecipeError, match="passes: the chain is empty"):
        build_steps(recipe([]))


def test_schema_lists_every_pass_with_its_options() -> None:
    schema = json_schema()
    variants = schema["properties"]["passes"]["items"]["anyOf"]
    consts = {v["const"] for v in variants if "const" in v}
    assert {"torchscript", "onnx_export", "onnx_simplify", "ort_optimize", "fp16", "int8_dynamic",
            "int8_static"} <= consts
    fp16 = next(v for v in variants if v.get("required") == ["fp16"])
    assert "keep_io_types" in json.dumps(fp16)
