"""The output folder of a run: whose it is, the lock on it, and what an interrupted run left there.

A folder this tool made holds the marker ``.model-pipeline`` at its root. A run writes only into a
folder that is new, empty, or marked (``--force`` marks a folder it did not make), and the only
things it ever deletes there are its own temporaries (:func:`pipeline.core.store.is_leftover`) and
the folders it replaces by name (``NN_<step>``, ``reference``, ``ship``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.disk import existing
from pipeline.core.errors import BadInputError
from pipeline.core.store import SWAP_PREFIX, TMP_PREFIX, TOOL, is_leftover, read_json, recover_swaps, write_json_atomic

log = logging.getLogger(__name__)

MARKER = f".{TOOL}"
LOCK = ".lock"
# the subfolders where a run writes single files atomically, beside the folder itself
WRITTEN_FOLDERS = ("reference", "bench", "plots")
MATRIX_FOLDERS = ("cells", "logs", "plots")  # the same, in a matrix's folder
NAME_MAX = 255  # bytes of one file name on every common file system
RESERVED_PATH = 160  # bytes a run's own paths add below the output folder (step folders, temporaries)


def output_folder(out: Path | None, recipe: str) -> Path:
    """Where a recipe's run writes: ``--out``, else artifacts/<recipe> in the working folder."""
    return out if out is not None else Path("artifacts") / recipe


def check_output_folder(out_dir: Path, given: Path | None, force: bool) -> None:
    """Refuse an output folder the run must not write into, before anything is written.

    ``given`` is the ``--out`` the user typed (None for the default); a relative one must not climb
    out of the working folder with ``..``, but symbolic links along it are followed.
    """
    label = f"--out {given}" if given is not None else f"output folder {out_dir}"
    if given is not None and not given.is_absolute() and os.path.normpath(given).split(os.sep)[0] == "..":
        raise BadInputError(f"{label}: a relative output path must not climb out of the working folder "
                            f"with '..'; give an absolute path to write elsewhere")
    _check_names(out_dir, label)
    for parent in [out_dir, *out_dir.parents]:
        if os.path.lexists(parent) and not parent.exists():
            raise BadInputError(f"{label}: {parent} is a link to nothing")
        if parent.exists() and not parent.is_dir():
            raise BadInputError(f"{label}: {parent} is a file, not a folder")
        if parent.exists():
            break
    if out_dir.is_dir():
        _check_own_entries(out_dir, label)
    if out_dir.is_dir() and not force and not is_ours(out_dir) and not _holds_only_ours(out_dir):
        raise BadInputError(f"{label}: the folder exists, is not empty and was not made by this tool "
                            f"(no {MARKER} in it); give a new or empty folder, or --force to write into it "
                            f"(the run then replaces only the entries it writes)")


def _check_names(out_dir: Path, label: str) -> None:
    """Every name along the path within the file system's limit, and the path within its own."""
    for part in out_dir.parts:  # before any stat: a name too long cannot even be looked up
        if len(os.fsencode(part)) > NAME_MAX:
            raise BadInputError(f"{label}: the name {part[:40]}... is {len(os.fsencode(part))} bytes, longer "
                                f"than the {NAME_MAX} a file name may have")
    anchor = existing(out_dir)
    try:
        name_max, path_max = os.pathconf(anchor, "PC_NAME_MAX"), os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in out_dir.absolute().parts:
        if len(os.fsencode(part)) > name_max:
            raise BadInputError(f"{label}: the name {part[:40]}... is {len(os.fsencode(part))} bytes, longer "
                                f"than the {name_max} this file system allows")
    if len(os.fsencode(str(out_dir.absolute()))) + RESERVED_PATH > path_max:
        raise BadInputError(f"{label}: the path is too long for this file system ({path_max} bytes at most, "
                            f"less the {RESERVED_PATH} the run's own files need)")


def _check_own_entries(out_dir: Path, label: str) -> None:
    """The marker and the lock, where present, must be regular files (a link to the lock is replaced)."""
    for name in (MARKER, LOCK):
        path = out_dir / name
        if os.path.lexists(path) and not path.is_symlink() and not path.is_file():
            raise BadInputError(f"{label}: {path} is not a regular file (this tool keeps its {name} file "
                                f"there); remove it or give another folder")


def is_ours(out_dir: Path) -> bool:
    """Whether the folder carries this tool's marker."""
    marker = out_dir / MARKER
    return marker.is_file() and not marker.is_symlink() and (read_json(marker) or {}).get("tool") == TOOL


def _holds_only_ours(out_dir: Path) -> bool:
    """Empty, or nothing but a lock and temporaries of this tool (a run that stopped right after starting)."""
    return all(p.name in (MARKER, LOCK) or p.name.startswith((TMP_PREFIX, SWAP_PREFIX)) for p in out_dir.iterdir())


@contextmanager
def claimed(out_dir: Path, recipe: str, written: tuple[str, ...] = WRITTEN_FOLDERS) -> Iterator[bool]:
    """Create and mark the folder, hold its lock (a second run waits), and tidy what a killed run left.

    Yields whether the run had to wait for another one. When the run fails before writing anything
    into a folder it created itself, the folder (and any parents it created) is removed again.
    """
    created = _make_folders(out_dir)
    fd, waited = _lock(out_dir)
    try:
        if not is_ours(out_dir):
            write_json_atomic(out_dir / MARKER, {"tool": TOOL, "recipe": recipe,
                                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _tidy(out_dir, written)
        _unlink_written_folders(out_dir, written)
        yield waited
    except BaseException:
        if created and {p.name for p in out_dir.iterdir()} <= {MARKER, LOCK}:
            _remove_created(out_dir, created)
        raise
    finally:
        os.close(fd)


def _make_folders(out_dir: Path) -> list[Path]:
    """mkdir -p, returning the folders it made, the deepest first."""
    missing = [p for p in [out_dir, *out_dir.parents] if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
    return missing


def _lock(out_dir: Path) -> tuple[int, bool]:
    """An exclusive lock on ``out_dir/.lock``; retried when the folder was removed while waiting."""
    waited = False
    while True:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / LOCK
        if path.is_symlink():  # never create or lock what a link points to
            log.warning("%s: a link where this tool keeps its lock file; replaced", path)
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run holds %s; waiting for it", out_dir)
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd, waited
        except FileNotFoundError:
            pass
        os.close(fd)  # the run we waited for removed the folder: start again


def _tidy(out_dir: Path, written: tuple[str, ...]) -> None:
    """Under the lock: put back bundles and steps a killed swap left aside, then delete leftovers."""
    for name in recover_swaps(out_dir):
        log.warning("%s: put back the %s/ an interrupted run had moved aside", out_dir, name)
    for folder in (out_dir, *(out_dir / name for name in written)):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in folder.iterdir():
            if is_leftover(path):
                log.info("removing %s, left by an interrupted run", path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _unlink_written_folders(out_dir: Path, written: tuple[str, ...]) -> None:
    """A link or file where the run writes one of its folders is removed (never written through); the
    folder is then made anew."""
    for name in written:
        path = out_dir / name
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            log.warning("%s: a %s where this tool keeps its %s/ folder; replaced by a new folder", path,
                        "link" if path.is_symlink() else "file", name)
            path.unlink()


def _remove_created(out_dir: Path, created: list[Path]) -> None:
    for name in (MARKER, LOCK):
        (out_dir / name).unlink(missing_ok=True)
    for folder in created:  # the deepest first; stop at the first that is not empty
        try:
            folder.rmdir()
        except OSError:
            break
