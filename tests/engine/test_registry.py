"""Passes by name: the built-in table, a registered pass, and an unknown name that lists the known ones."""

from __future__ import annotations

import pytest

from passes import BUILTIN_PASSES
from pipeline.core.artifact import Format
from pipeline.core.errors import RecipeError
from pipeline.engine.pass_api import Pass, PassConfig
from pipeline.engine.registry import get_pass, pass_names, register


def test_every_built_in_pass_loads_under_its_name() -> None:
    for name in BUILTIN_PASSES:
        cls = get_pass(name)
        assert cls.name == name and isinstance(cls.produces, Format) and cls.consumes


def test_an_unknown_name_suggests_the_closest_and_lists_all() -> None:
    with pytest.raises(RecipeError, match=r"passes\[2\]: unknown pass 'onnx_exprot'; did you mean onnx_export\? "
                                          r"\(known: .*nncf_int8.*\)"):
        get_pass("onnx_exprot", "passes[2]")


def test_a_registered_pass_joins_the_names_and_twice_is_refused() -> None:
    class Echo(Pass):
        name = "echo_for_test"
        consumes = frozenset({Format.ONNX})
        produces = Format.ONNX
        Config = PassConfig

    register(Echo)
    assert get_pass("echo_for_test") is Echo and "echo_for_test" in pass_names()
    register(Echo)  # the same class again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Other", (Echo,), {}))
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Shadow", (Echo,), {"name": "onnx_export"}))
