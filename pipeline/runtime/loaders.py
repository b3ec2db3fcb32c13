"""Loading torch artifacts (TorchScript .pt, torch.export .pt2) without running anything they hold.

No artifact is ever fully unpickled: every ``torch.load`` made while one loads runs weights-only, even
where torch passes ``weights_only=False`` itself (torch.export.load falls back to it for sample inputs and
pickled weights). A .pt2 archive is checked first (pipeline.runtime.pt2_checks) and its program's calls
after; a TorchScript archive's pickles may name only TorchScript's own types, which torch.jit's unpickler
enforces too. A refused artifact is an ArtifactError naming the file.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import threading
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.errors import ArtifactError
from pipeline.runtime.pt2_checks import archive_problem, call_problem

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # read by torch.serialization.load on every call; beats weights_only=False
UNFORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_ENVIRON_LOCK = threading.RLock()
TORCHSCRIPT_GLOBALS = {("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set")}


@contextmanager
def weights_only() -> Iterator[None]:
    """Within, every torch.load in this process runs weights-only (a pickle may rebuild tensors and
    containers, never call anything else)."""
    with _ENVIRON_LOCK:
        saved = {name: os.environ.get(name) for name in (FORCE, UNFORCE)}
        os.environ[FORCE] = "1"
        os.environ.pop(UNFORCE, None)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def refused(path: Path, what: str) -> ArtifactError:
    """The error for an artifact that holds something other than a program and its weights."""
    return ArtifactError(f"{path}: holds something other than a model's program and weights ({what}); "
                         f"refused to load it")


def _unpickling_detail(exc: BaseException) -> str:
    """The global a weights-only unpickler refused, from its (long) message."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"a pickle that calls {found.group(1)}" if found else "a pickle that is not plain tensors"


def load_program(path: Path) -> Any:
    """The torch.export ExportedProgram saved at ``path`` (checked before and after loading)."""
    import torch

    problem = archive_problem(path)
    if problem:
        raise refused(path, problem)
    try:
        with weights_only():
            program = torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        raise refused(path, _unpickling_detail(exc)) from None
    problem = call_problem(program)
    if problem:
        raise refused(path, problem)
    return program


def load_exported(path: Path) -> Any:
    """The module of the torch.export program saved at ``path``, ready to call."""
    return load_program(path).module()


def _pickle_globals(data: bytes) -> Iterator[tuple[str, str]]:
    """(module, name) of every GLOBAL a protocol-2 pickle names; a STACK_GLOBAL as ('', 'STACK_GLOBAL')."""
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                yield module, name
            elif opcode.name == "STACK_GLOBAL":
                yield "", "STACK_GLOBAL"
    except (ValueError, EOFError, UnicodeDecodeError):
        return  # not a pickle: torch.jit.load says so


def _torchscript_global(module: str, name: str) -> bool:
    return module.split(".")[0] in ("__torch__", "torch") or (module, name) in TORCHSCRIPT_GLOBALS


def torchscript_problem(path: Path) -> str | None:
    """A pickle in the TorchScript archive naming a Python global outside TorchScript's own types."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith("pkl"):
                    continue
                for module, name in _pickle_globals(archive.read(member)):
                    if not _torchscript_global(module, name):
                        return f"{member} calls {module}.{name}".replace("..", ".")
    except zipfile.BadZipFile:
        return None  # not an archive: torch.jit.load says so
    return None


def load_torchscript(path: Path, map_location: Any = "cpu") -> Any:
    """The TorchScript module saved at ``path``."""
    import torch

    problem = torchscript_problem(path)
    if problem:
        raise refused(path, problem)
    with weights_only(), warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript as a whole; choosing this format is choosing it.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location=map_location)
