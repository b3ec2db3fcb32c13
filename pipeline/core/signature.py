"""What tells that files changed without reading them all: size, modification and change time and
inode, as git's index does. Used where a run decides it can answer from an earlier one."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any


def file_state(path: Path) -> list[int]:
    """A file's size, modification time, change time (ns) and inode: what git's index compares. Restoring
    a file's size and modification time after editing it does not restore its change time."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def folder_state(folder: Path, skipped: Collection[str] = ()) -> dict[str, Any]:
    """The state of every file under ``folder`` (``folder`` itself and links to files followed; links
    to folders below it are not, so a link loop cannot trap the walk), by path relative to it; the
    relative paths in ``skipped`` are left out."""
    state: dict[str, Any] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if (Path(root) / name).is_symlink():
                state[(Path(root) / name).relative_to(folder).as_posix()] = f"link -> {os.readlink(Path(root) / name)}"
        for name in files:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if relative in skipped:
                continue
            try:
                state[relative] = file_state(path)
            except OSError:
                state[relative] = "unreadable"
    return state


def named_files(value: Any, base_dir: Path) -> dict[str, list[int]]:
    """The state of every existing file that a string anywhere in ``value`` (a recipe as plain values)
    names, absolute or relative to ``base_dir``: calibration sets, corpora, label files."""
    found: dict[str, list[int]] = {}
    if isinstance(value, dict):
        for item in value.values():
            found.update(named_files(item, base_dir))
    elif isinstance(value, list):
        for item in value:
            found.update(named_files(item, base_dir))
    elif isinstance(value, str) and 0 < len(value) < 4096:
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        try:
            if path.is_file():
                found[value] = file_state(path)
        except OSError:
            pass
    return found
