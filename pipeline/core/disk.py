"""Free space: refuse to start a write the disk cannot hold, and name the path when it fills anyway.

Native writers (onnxruntime's optimizer, onnx's shape inference, the tokenizers library) may stop at a
full disk without a Python error, or with one that names no path; so a step is not started without
room for it, and a step that leaves its disk all but full is not trusted.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.core.errors import DiskFullError
from pipeline.core.store import final_path

MIN_FREE_BYTES = 256 << 20  # a step or a bundle is not started with less free space than this
GROWTH = 3  # a step may write up to this many times its parent's bytes (scratch copies, external data)
RESERVE_BYTES = 1 << 20  # a step that leaves less than this free may have been cut short
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or would hold it)."""
    return shutil.disk_usage(existing(path)).free


def mib(size: float) -> str:
    """A byte count as MiB text."""
    return f"{size / (1 << 20):.1f} MiB"


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error says a disk or quota is full (native libraries raise it without an errno)."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def disk_full(exc: BaseException, out_dir: Path, writing: Path | None = None) -> DiskFullError:
    """The one-line error for a full disk: the path being written and the free space there.

    The path is the one the error names, else ``writing`` (or the scratch folder, when that is the
    disk that filled). Exit 2 when it is the output folder's disk (the user's to free), 3 when another.
    """
    named = (exc.filename2 or exc.filename) if isinstance(exc, OSError) else None
    scratch = Path(tempfile.gettempdir())
    if named:
        path = Path(named)
    elif free_bytes(scratch) < RESERVE_BYTES <= free_bytes(out_dir):
        path = scratch
    else:
        path = writing or out_dir
    path = final_path(path)
    same_disk = os.stat(existing(path)).st_dev == os.stat(existing(out_dir)).st_dev
    error = DiskFullError(f"disk full writing {path} ({mib(free_bytes(path))} free on that disk); "
                          f"finished steps are kept and temporaries removed")
    error.exit_code = 2 if same_disk else 3
    return error


def require_space(folder: Path, source_bytes: int, what: str) -> None:
    """Raise DiskFullError (exit 2) unless the disk of ``folder`` has room to write from ``source_bytes``:
    ``GROWTH`` times as much, and at least ``MIN_FREE_BYTES``."""
    needed = max(GROWTH * source_bytes, MIN_FREE_BYTES)
    free = free_bytes(folder)
    if free < needed:
        raise DiskFullError(f"{what}: {existing(folder)} has {mib(free)} free, and this needs about {mib(needed)}; "
                            f"free some space or give another --out")


def check_not_cut_short(folder: Path, what: Path) -> None:
    """Raise DiskFullError when the disk of ``folder`` is all but full after writing ``what``."""
    free = free_bytes(folder)
    if free < RESERVE_BYTES:
        raise DiskFullError(f"disk full writing {what} ({mib(free)} free on that disk); its files may be "
                            f"cut short, so it is not kept; finished steps are kept")
