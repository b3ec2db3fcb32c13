"""What the peer build scripts share (optimum_peers, intel_peers, olive_peers). Each runs with its own
environment's python, which has neither this project nor its dependencies, so this module imports
the standard library only; the scripts find it beside them (a script's folder is on sys.path)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("peer_script")


def versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions (and Python's), those found."""
    found = {"python": sys.version.split()[0]}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def reason(exc: BaseException) -> str:
    """'Type: first line of the message' (one line for the table)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def record_step(name: str, make: Callable[[], Path], precision: str, how: str, report: dict[str, Any],
                kind: str = "onnx") -> Path | None:
    """Run one build step; record its file, or why it failed, in ``report`` ("peers" / "failed")."""
    start = time.perf_counter()
    try:
        path = make()
        if not path.is_file():
            raise FileNotFoundError(f"{path} was not written")
    except Exception as exc:  # any failure is a result: the table shows the reason
        log.warning("%s failed: %s", name, reason(exc))
        report["failed"][name] = reason(exc)
        return None
    seconds = time.perf_counter() - start
    log.info("%s: %s (%.1f s)", name, path, seconds)
    report["peers"][name] = {"path": str(path), "precision": precision, "how": how, "seconds": seconds, "kind": kind}
    return path
