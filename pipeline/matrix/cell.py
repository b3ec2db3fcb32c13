"""One phase of one cell, as a Ray task runs it on a node: ``python -m pipeline optimize`` in a child
process, and what the matrix needs from its result. No Ray here: the cluster module wraps it.

A cell runs in two phases. ``build`` builds and verifies (``--no-bench``); it may share a node with other
builds. ``bench`` runs the same command again with the benchmark (every step is cached by then) and holds
the whole node. The child dies with the task's worker (a parent-death signal), so a retried task never
races a leftover child for the cell's folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Phase = Literal["build", "bench"]
PR_SET_PDEATHSIG = 1
TAIL_LINES = 20
PHASES: tuple[Phase, ...] = ("build", "bench")
# terminal escape sequences (CSI, OSC, two-byte) and the control characters left beside them
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?"
                     r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """``text`` without terminal escape codes or control characters (tabs and line breaks stay)."""
    return ESCAPES.sub("", text)


def log_name(cell: str, phase: Phase) -> str:
    """The file name of a phase's log: ``<cell>.<phase>.log``."""
    return f"{cell}.{phase}.log"


@dataclass
class PhaseResult:
    """What one phase of a cell did: its exit code and one-line message, where and when it ran."""

    cell: str
    phase: Phase
    exit_code: int
    message: str
    node: str
    pid: int
    started: float  # seconds since the epoch
    finished: float
    summary: dict[str, Any] = field(default_factory=dict)  # from the cell's report.json, when it wrote one

    def as_json(self) -> dict[str, Any]:
        """The result as matrix.json records it."""
        return asdict(self)


def command(recipe: Path, overrides: tuple[str, ...], out: Path, phase: Phase) -> list[str]:
    """The optimize command line of one phase."""
    args = [sys.executable, "-m", "pipeline", "optimize", str(recipe), "--out", str(out)]
    for text in overrides:
        args += ["--set", text]
    return args + (["--no-bench"] if phase == "build" else [])


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def message_of(stderr: str, exit_code: int) -> str:
    """The line that says why: the last ``error:``-style line the run printed, else its last line (without
    terminal escape codes)."""
    lines = [text for text in (plain(line).strip() for line in stderr.splitlines()) if text]
    for line in reversed(lines):
        if line.startswith(("error:", "internal error:", "terminated:", "interrupted:")):
            return line
    if exit_code == 0:
        return "shipped"
    return lines[-1] if lines else f"exit {exit_code}"


def run_phase(cell: dict[str, Any], phase: Phase, out: Path, root: Path, node: str, timeout: float,
              log_dir: Path) -> PhaseResult:
    """Run one phase of ``cell`` (its ``as_json``) into ``out``, from the project folder ``root``; the
    child's output goes to ``log_dir/<cell>.<phase>.log``; a phase past ``timeout`` seconds is exit 3."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / log_name(cell["name"], phase)
    args = command(Path(cell["recipe"]), tuple(cell["overrides"]), out, phase)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CI": os.environ.get("CI", "1")}  # plain progress lines
    started = time.time()
    with open(log_path, "w+", encoding="utf-8") as log:
        child = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=_die_with_parent)
        try:
            exit_code = child.wait(timeout=timeout)
            log.seek(0)
            message = message_of(log.read(), exit_code)
        except subprocess.TimeoutExpired:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            exit_code, message = 3, f"error: {phase} of {cell['name']} timed out after {timeout:.0f} s"
    summary = summarize_report(out / "report.json") if exit_code in (0, 1) else {}
    return PhaseResult(cell["name"], phase, exit_code, message, node, os.getpid(), started, time.time(), summary)


def _ship_point_ratio(report: dict[str, Any], step: str | None) -> dict[str, Any] | None:
    """The shipped step's ratio over eager at the ship point (the entry with the most rounds)."""
    entries = [r for r in report.get("ratios") or [] if r.get("target") == step]
    return max(entries, key=lambda r: (r.get("rounds", 0), -r["batch"], r["seq"])) if entries else None


def _size_bytes(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def summarize_report(path: Path) -> dict[str, Any]:
    """What the matrix report shows of one cell: the shipped step, its runtime and precision, parity,
    ratio over eager with its interval, size, the machine it was measured on, and random weights."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    step = report.get("shipped_step")
    row = next((a for a in report.get("artifacts", []) if a.get("name") == step), None)
    metrics = ((row or {}).get("parity") or {}).get("metrics") or {}
    cosines = [m["cos_min"] for m in metrics.values() if isinstance(m, dict) and "cos_min" in m]
    bundle = report.get("bundle")
    fingerprint = report.get("bench_environment") or {}
    return {
        "recipe": report.get("recipe"), "shipped_step": step, "format": (row or {}).get("format"),
        "precision": (row or {}).get("precision"), "parity_passed": ((row or {}).get("parity") or {}).get("passed"),
        "cos_min": min(cosines) if cosines else None, "ratio": _ship_point_ratio(report, step),
        "artifact_bytes": ((row or {}).get("stats") or {}).get("bytes"),
        "bundle_bytes": _size_bytes(path.parent / bundle) if bundle else None,
        "random_weights": report.get("random_weights"), "model": (report.get("model") or {}).get("source"),
        "machine": {key: fingerprint.get(key) for key in ("cpu", "logical_cores", "threads", "device")}
        if fingerprint else None,
    }
