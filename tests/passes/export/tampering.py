"""Helpers that tamper with saved torch artifacts: a pickle whose loading writes a marker file, members of a
zip archive replaced, and a step's manifest brought back in line (hashes, seal) so only the loader stands
between the payload and the user."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

Member = bytes | Callable[[bytes], bytes]


class Payload:
    """Unpickled without restriction, it writes ``marker`` through ``eval``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return eval, (f"open({self.marker!r}, 'w').write('x')",)


def pickled(marker: Path, protocol: int = 2) -> bytes:
    """The payload as a plain pickle (TorchScript reads protocol 2)."""
    return pickle.dumps(Payload(marker), protocol=protocol)


def torch_saved(marker: Path) -> bytes:
    """The payload as ``torch.save`` writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def member_name(archive: Path, relative: str) -> str:
    """The full name of the member ``relative`` to the archive's root folder."""
    with zipfile.ZipFile(archive) as handle:
        names = handle.namelist()
    return next(name for name in names if name == relative or name.split("/", 1)[-1] == relative)


def rewrite(archive: Path, replace: dict[str, Member], add: dict[str, bytes] | None = None) -> None:
    """Rewrite ``archive`` in place: members replaced (by full name; bytes, or a function of the old bytes)
    and members added (names relative to the archive's root folder)."""
    tmp = archive.with_name(archive.name + ".tmp")
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as target:
        root = source.namelist()[0].split("/", 1)[0]
        for info in source.infolist():
            data = source.read(info.filename)
            new = replace.get(info.filename, data)
            target.writestr(info, new(data) if callable(new) else new)
        for name, data in (add or {}).items():
            target.writestr(f"{root}/{name}", data)
    os.replace(tmp, archive)


def edit_json(edit: Callable[[Any], None]) -> Callable[[bytes], bytes]:
    """A member rewrite that loads JSON, lets ``edit`` change it in place, and dumps it."""
    def apply(data: bytes) -> bytes:
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()
    return apply


def reseal(step: Path) -> None:
    """Bring a step's manifest in line with its files: their sha256 and, when manifests carry one, the seal."""
    path = step / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((step / name).read_bytes()).hexdigest()
    manifest["sha256"] = manifest["files"][manifest["file"]]
    if "seal" in manifest and importlib.util.find_spec("pipeline.core.seal") is not None:
        from pipeline.core.seal import sealed

        manifest = sealed({key: value for key, value in manifest.items() if key != "seal"})
    path.write_text(json.dumps(manifest, indent=2))
