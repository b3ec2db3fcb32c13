"""The run's own record of which step passed its gate with which cache key, read by the next run."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.seal import read_record, write_record

PASSED = ".passed.json"


def passed_last_time(out_dir: Path) -> dict[str, str]:
    """Cache key of every step that passed its gate in the folder's last run, by step name (the sealed
    record the run keeps for this; its report is written for people and tools, and never read back)."""
    record = read_record(out_dir / PASSED, "record of passing steps") or {}
    passed = record.get("passed")
    if not isinstance(passed, dict):
        return {}
    return {str(name): key for name, key in passed.items() if isinstance(key, str)}


def remember_passed(out_dir: Path, passed: dict[str, str]) -> None:
    """Keep which steps passed their gate, with their cache keys, for the next run."""
    write_record(out_dir / PASSED, {"passed": passed})
