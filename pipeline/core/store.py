"""Storage on disk: atomic writes, staged folders swapped in under a journal, content hashes, and
JSON that every reader can parse.

Every temporary this tool writes is named ``.model-pipeline-tmp-*``, and a temporary folder also
holds the marker file ``.model-pipeline-tmp``: that is how a later run tells its own leftovers
from anything else and deletes nothing it did not make. A folder that replaces an existing one is
swapped in under a journal (``.model-pipeline-swap-<name>.json``), so a run killed between the two
renames of a swap leaves what it needs to put the old folder back (:func:`recover_swaps`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
TOOL = "model-pipeline"
TMP_PREFIX = f".{TOOL}-tmp-"  # the name of every temporary file or folder starts so
TMP_MARKER = f".{TOOL}-tmp"  # ... and a temporary folder holds this file
STAGED = "content"  # the folder inside a staging shell that becomes the final folder
SWAP_PREFIX = f".{TOOL}-swap-"  # journal of a folder swap in progress: <prefix><final name>.json


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside ``path``, flush them to disk, and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON (sorted keys, indented) atomically (see :func:`write_bytes_atomic`)."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def temporary_path(final: Path, suffix: str = "") -> Path:
    """A fresh temporary file name beside ``final`` (for writers that take a path, not bytes)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest, by relative POSIX path; a link (never
    followed) or anything else that is not a regular file or folder is named by what it is instead."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.name == MANIFEST and path.parent == folder:
            continue
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            hashes[relative] = "a symbolic link"
        elif path.is_file():
            hashes[relative] = sha256_file(path)
        elif not path.is_dir():
            hashes[relative] = "not a regular file"
    return hashes


@contextmanager
def staging_folder(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success, replace ``final`` with it (:func:`replace_folder`).

    The folder yielded sits inside a marked temporary shell, so it never holds the marker itself. On
    any error (or interruption) the shell is removed and ``final`` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    shell = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        (shell / TMP_MARKER).write_text(f"{TOOL} {os.getpid()}\n", encoding="utf-8")
        content = shell / STAGED
        content.mkdir()
        yield content
        replace_folder(content, final)
    finally:
        shutil.rmtree(shell, ignore_errors=True)


def final_path(path: Path) -> Path:
    """Where a file being written in a staging folder will lie once the folder is in place."""
    parts = list(Path(path).parts)
    for i, part in enumerate(parts[:-1]):
        if part.startswith(TMP_PREFIX) and parts[i + 1] == STAGED:
            parts[i:i + 2] = [part.removeprefix(TMP_PREFIX).rsplit("-", 1)[0]]
            return Path(*parts)
    return Path(path)


def replace_folder(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``. An existing ``final`` folder is marked as a temporary, moved aside under a
    journal, and deleted once ``new`` is in place; a run killed in between is undone by
    :func:`recover_swaps`. A link or a file in the way is removed itself, never written through."""
    if os.path.lexists(final) and (final.is_symlink() or not final.is_dir()):
        final.unlink()
    if not os.path.lexists(final):
        os.replace(new, final)
        return
    journal = final.with_name(f"{SWAP_PREFIX}{final.name}.json")
    old = temporary_path(final, ".old")
    write_json_atomic(journal, {"tool": TOOL, "final": final.name, "old": old.name})
    _mark_temporary(final)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    journal.unlink()


def recover_swaps(folder: Path) -> list[str]:
    """Finish or undo every folder swap a killed run left in ``folder``; the names put back.

    A swap whose new folder never arrived gets its old folder back; one that completed loses the
    old folder it had moved aside. Only the entries a journal names, with this tool's names, are touched.
    """
    restored = []
    for journal in sorted(folder.glob(f"{SWAP_PREFIX}*.json")):
        entry = read_json(journal) or {}
        final_name, old_name = str(entry.get("final", "")), str(entry.get("old", ""))
        if entry.get("tool") != TOOL or not _plain_name(final_name) or not _plain_name(old_name) \
                or not old_name.startswith(TMP_PREFIX):
            continue  # not a journal of ours: leave it
        final, old = folder / final_name, folder / old_name
        if is_leftover(old) and old.is_dir():  # only a folder this tool marked before moving it aside
            if os.path.lexists(final):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
                (final / TMP_MARKER).unlink(missing_ok=True)
                restored.append(final_name)
        journal.unlink()
    return restored


def _mark_temporary(folder: Path) -> None:
    """Put the temporary marker into a folder about to be moved aside, so a journal can only ever name
    a folder this tool moved."""
    marker = folder / TMP_MARKER
    if marker.is_symlink():
        marker.unlink()
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{TOOL} {os.getpid()}\n")


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def is_leftover(path: Path) -> bool:
    """Whether ``path`` is a temporary of this tool: its name, and for a folder the marker inside or
    nothing at all (a link with such a name counts: removing it never touches what it points to)."""
    if not path.name.startswith(TMP_PREFIX):
        return False
    if path.is_symlink():
        return True
    if path.is_dir():  # marked, or empty (a run killed between making it and marking it)
        marker = path / TMP_MARKER
        return (marker.is_file() and not marker.is_symlink()) or not any(path.iterdir())
    return path.is_file()


MAX_RECORD_BYTES = 64 << 20  # a JSON record this tool wrote: manifests, results, journals, records


def read_regular(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of a regular file of at most ``max_bytes``, or None when it is missing, unreadable, a link,
    not a regular file (a FIFO does not block the open) or larger."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= max_bytes else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object this tool wrote, or None when the file is not one (:func:`read_regular` with
    MAX_RECORD_BYTES), is not JSON, or not an object."""
    data = read_regular(path, MAX_RECORD_BYTES)
    try:
        value = json.loads(data.decode("utf-8")) if data is not None else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def json_safe(value: Any) -> Any:
    """Plain, strict JSON: Infinity and NaN become strings ('inf', 'nan'), tuples lists, keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
