"""Passes by name: the built-in table (``passes.BUILTIN_PASSES``, each module imported only when its
pass is asked for) and any pass registered at run time (a plug-in, or a test's own)."""

from __future__ import annotations

import difflib
import importlib

from passes import BUILTIN_PASSES
from pipeline.core.errors import RecipeError
from pipeline.engine.pass_api import Pass

_REGISTERED: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass that is not built in available to recipes under its ``name``."""
    known = _REGISTERED.get(cls.name)
    if cls.name in BUILTIN_PASSES or (known is not None and known is not cls):
        raise ValueError(f"pass {cls.name!r} registered twice")
    _REGISTERED[cls.name] = cls
    return cls


def pass_names() -> list[str]:
    """Every pass a recipe may name, sorted."""
    return sorted({*BUILTIN_PASSES, *_REGISTERED})


def get_pass(name: str, where: str = "passes") -> type[Pass]:
    """The pass called ``name``; an unknown name lists the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTIN_PASSES:
        module, cls_name = BUILTIN_PASSES[name].split(":")
        cls: type[Pass] = getattr(importlib.import_module(module), cls_name)
        return cls
    close = difflib.get_close_matches(name, pass_names(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise RecipeError(f"{where}: unknown pass {name!r}{hint} (known: {', '.join(pass_names())})")


def all_passes() -> dict[str, type[Pass]]:
    """Every pass by name, its module imported."""
    return {name: get_pass(name) for name in pass_names()}
