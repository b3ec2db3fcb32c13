"""A recipe's ``model.factory: "pkg.mod:fn"``: imported, called with no arguments, and held to its contract.

A recipe is code: the factory may be any importable function. What comes back is checked before it
is used: a 2-tuple of a ``torch.nn.Module`` and a mapping of input name -> tensor or numeric array.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import ModelError
from pipeline.model.files import reason

NUMERIC_KINDS = "biufc"  # numpy dtype kinds: bool, signed, unsigned, float, complex


def factory_function(target: str) -> Callable[[], Any]:
    """The factory the recipe names under model.factory (imported only then)."""
    module_name, _, fn_name = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"model.factory: cannot import {target!r}: {exc}") from exc
    if not callable(function):
        raise ModelError(f"model.factory {target} is not callable (it is a {type(function).__name__})")
    return function


def call_factory(target: str) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """Call the factory and check its contract: (torch.nn.Module, example inputs by name)."""
    function = factory_function(target)
    try:
        result = function()
    except (Exception, SystemExit) as exc:  # the recipe's own code: any failure is bad input
        raise ModelError(f"model.factory {target}: calling it raised {reason(exc)}") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)
            and isinstance(result[1], Mapping)):
        raise ModelError(f"model.factory {target} must return (torch.nn.Module, dict of example inputs), "
                         f"got {_type_names(result)}")
    module, examples = result
    return module, {name: _example_array(target, name, value) for name, value in examples.items()}


def _type_names(value: Any) -> str:
    """What a factory returned, by type: ``str``, or ``(SmallCNN, list)`` for a tuple."""
    if isinstance(value, tuple):
        return f"({', '.join(type(item).__name__ for item in value)})"
    return type(value).__name__


def _example_array(target: str, name: Any, value: Any) -> np.ndarray:
    """A factory's example input as a numeric numpy array, or a ModelError saying what it is instead."""
    if not isinstance(name, str):
        raise ModelError(f"model.factory {target}: example input names must be strings, got {name!r}")
    try:
        array = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        detail = reason(exc)
    else:
        if array.dtype.kind in NUMERIC_KINDS:
            return array
        detail = f"dtype {array.dtype}"
    raise ModelError(f"model.factory {target}: example input {name!r} must be a tensor or a numeric array, "
                     f"got {type(value).__name__} ({detail})")
