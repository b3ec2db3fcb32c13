"""What a torch.export archive (.pt2) may hold before this tool loads it, and what the loaded program may call.

``torch.export.load`` runs more than pickles: it evaluates every symbolic expression of the program with
sympy (``eval``), ``.module()`` compiles the saved guards as Python, and an AOTInductor member is a shared
library. Each is checked here against what torch.export itself writes; anything else is refused. Pickled
members are left to torch's weights-only unpickler (pipeline.runtime.loaders.weights_only).
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# a name: the only text an expression or a guard may quote (an input's name, a symbol's)
SAFE_TEXT = re.compile(r"\w*", re.ASCII)
SYMBOL = re.compile(r"[a-z]{1,4}\d+")  # s0, u3, ps1: the names torch gives to symbolic sizes
SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor",
    "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "true", "false", "oo", "zoo", "nan",
    "Half", "One", "Zero", "NegativeOne", "Infinity", "NegativeInfinity", "BooleanTrue", "BooleanFalse",
})
GUARD_NAMES = frozenset({"L", "math", "torch", "inf", "IsNonOverlappingAndDenseIndicator",
                         "cast_symbool_to_symint_guardless"})
GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel", "isnan", "isinf", "inf",
                              "ceil", "floor", "trunc", "sqrt", "sym_max", "sym_min", "sym_int", "sym_float",
                              "sym_not", "sym_ite", "sym_sqrt"})
OPERATORS = (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context)
STRUCTURE = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Tuple)


def _sympy_functions() -> frozenset[str]:
    """Names of torch's sympy functions (FloorDiv, ModularIndexing...), which its deserializer may call."""
    import sympy
    import torch.utils._sympy.functions as functions

    return frozenset(name for name, value in vars(functions).items()
                     if not name.startswith("_") and isinstance(value, type) and issubclass(value, sympy.Basic))


def _constant_problem(node: ast.Constant) -> str | None:
    value = node.value
    if isinstance(value, str) and not SAFE_TEXT.fullmatch(value):
        return f"the text {value[:40]!r}"
    if not isinstance(value, (str, int, float, bool, type(None))):
        return f"a {type(value).__name__} constant"
    return None


def expression_problem(text: str, names: frozenset[str], attributes: frozenset[str]) -> str | None:
    """Why ``text`` is not a plain arithmetic expression over ``names`` (calls, comparisons, subscripts,
    ``attributes``), or None when it is one."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return "not an expression"
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names and not SYMBOL.fullmatch(node.id):
                return f"the name {node.id!r}"
        elif isinstance(node, ast.Attribute):
            if node.attr not in attributes:
                return f"the attribute {node.attr!r}"
        elif isinstance(node, ast.Constant):
            problem = _constant_problem(node)
            if problem:
                return problem
        elif isinstance(node, ast.keyword):
            if node.arg is None or node.arg.startswith("_") or not isinstance(node.value, ast.Constant):
                return "a keyword argument"
        elif not isinstance(node, (*STRUCTURE, ast.Call, ast.Subscript, *OPERATORS)):
            return f"Python syntax ({type(node).__name__})"
    return None


def _walk(value: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a JSON document."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                yield item[key]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def program_problem(document: Any) -> str | None:
    """Why a serialized program (models/<name>.json) would run code on loading, or None."""
    sympy_names = SYMPY_NAMES | _sympy_functions()
    for text in _walk(document, "expr_str"):
        problem = expression_problem(text, sympy_names, frozenset()) if isinstance(text, str) else "not text"
        if problem:
            return f"a symbolic expression holds {problem}"
    guards = document.get("guards_code", []) if isinstance(document, dict) else []
    for text in guards if isinstance(guards, list) else [guards]:
        problem = expression_problem(text, GUARD_NAMES, GUARD_ATTRIBUTES) if isinstance(text, str) else "not text"
        if problem:
            return f"a guard holds {problem}"
    return None


def _relative(name: str) -> str:
    """A member's name below the archive's root folder (torch's reader strips it)."""
    return name.split("/", 1)[1] if "/" in name else name


def _constants_problem(config: Any) -> str | None:
    """A constant torch would rebuild with pickle.loads or torch's object unpickler, not as a tensor."""
    from torch.export.pt2_archive.constants import TENSOR_CONSTANT_FILENAME_PREFIX

    entries = config.get("config") if isinstance(config, dict) else None
    for name, entry in (entries or {}).items():
        path = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path.startswith(TENSOR_CONSTANT_FILENAME_PREFIX):
            return f"the constant {name} is a pickled Python object, not a tensor"
    return None


def _member_problem(archive: zipfile.ZipFile, name: str) -> str | None:
    from torch.export.pt2_archive.constants import AOTINDUCTOR_DIR, CONSTANTS_DIR, MODELS_DIR

    relative = _relative(name)
    if relative.startswith(AOTINDUCTOR_DIR) or relative.endswith((".so", ".dll", ".dylib")):
        return f"{relative} is compiled code"
    if relative.startswith(MODELS_DIR) and relative.endswith(".json"):
        problem = program_problem(json.loads(archive.read(name)))
        return f"{relative}: {problem}" if problem else None
    if relative.startswith(CONSTANTS_DIR) and relative.endswith("_constants_config.json"):
        return _constants_problem(json.loads(archive.read(name)))
    return None


def archive_problem(path: Path) -> str | None:
    """Why loading the .pt2 archive at ``path`` could run something it holds, or None when it holds only a
    program, tensors and the pickles torch's weights-only unpickler reads."""
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_PATH

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if ARCHIVE_VERSION_PATH not in {_relative(name) for name in names} or "version" in names:
                return "not an archive in the format torch.export.save writes"
            for name in names:
                problem = _member_problem(archive, name)
                if problem:
                    return problem
    except (zipfile.BadZipFile, ValueError, RecursionError) as exc:
        return f"not a readable torch.export archive ({type(exc).__name__})"
    return None


def _allowed_calls() -> tuple[tuple[type, ...], frozenset[Any]]:
    """The operator types and the Python builtins a loaded program may call (torch.export's own verifier
    list, and the symbolic-size functions its deserializer knows)."""
    import math
    import operator

    import torch
    from torch.fx.experimental.symbolic_shapes import cast_symbool_to_symint_guardless

    builtins = {operator.getitem, operator.add, operator.mul, operator.sub, operator.truediv, operator.floordiv,
                operator.mod, operator.pow, operator.neg, operator.pos, operator.abs, operator.and_, operator.or_,
                operator.not_, operator.lshift, operator.rshift, operator.eq, operator.ne, operator.ge, operator.le,
                operator.gt, operator.lt, math.ceil, math.floor, math.trunc, round, torch.sym_not, torch.sym_int,
                torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_sqrt, torch.sym_sum,
                torch._C._set_grad_enabled, torch.autograd.grad_mode.set_grad_enabled,
                torch.amp.autocast_mode._enter_autocast, torch.amp.autocast_mode._exit_autocast,
                cast_symbool_to_symint_guardless}
    return (torch._ops.OpOverload, torch._ops.HigherOrderOperator), frozenset(builtins)


def _leaves(value: Any) -> Iterator[Any]:
    """The leaves of a node's arguments (lists, tuples and dicts opened)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            yield item


def _node_problem(node: Any, allowed: tuple[tuple[type, ...], frozenset[Any]]) -> str | None:
    import torch

    types, builtins = allowed
    if node.op not in ("placeholder", "get_attr", "call_function", "output"):
        return f"the node {node.name} is a {node.op}"
    callables = [node.target] if node.op == "call_function" else []
    callables += [leaf for leaf in _leaves((node.args, node.kwargs))
                  if callable(leaf) and not isinstance(leaf, (torch.fx.Node, torch.nn.Module))]
    for target in callables:
        if not isinstance(target, types) and target not in builtins:
            return f"the node {node.name} calls {getattr(target, '__qualname__', type(target).__name__)}"
    value = node.meta.get("val") if node.op == "placeholder" else None
    if isinstance(value, str) and not SAFE_TEXT.fullmatch(value):
        return f"the input {node.name} is the text {value[:40]!r}"
    return None


def _spec_texts(spec: Any) -> Iterator[str]:
    """Every text key of a pytree spec (the names the guards of ``.module()`` are written with)."""
    stack = [spec]
    while stack:
        item = stack.pop()
        context = getattr(item, "context", None)
        keys = context if isinstance(context, (list, tuple)) else [context]
        yield from (key for key in keys if isinstance(key, str))
        children = getattr(item, "children", None)
        stack.extend(children() if callable(children) else [])


def call_problem(program: Any) -> str | None:
    """What a loaded ExportedProgram would call beyond torch operators, or None."""
    import torch

    allowed = _allowed_calls()
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                problem = _node_problem(node, allowed)
                if problem:
                    return problem
    for entry in program.module_call_graph:
        for spec in (entry.signature.in_spec, entry.signature.out_spec) if entry.signature else ():
            bad = next((text for text in _spec_texts(spec) if not SAFE_TEXT.fullmatch(text)), None)
            if bad is not None:
                return f"an input or output is named {bad[:40]!r}"
    return None
