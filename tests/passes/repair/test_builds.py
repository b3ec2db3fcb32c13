"""A repair's builds: in order, in worker processes when asked, one at a time otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from passes.repair import builds as builds_module
from passes.repair.builds import Builds, build_processes


def write_kept(target: Path, kept: list[str]) -> None:
    """A conversion that pickles: writes what it kept in float and the process that built it."""
    target.write_text(json.dumps({"kept": kept, "pid": os.getpid()}))


def test_many_builds_come_back_in_order_from_worker_processes(tmp_path: Path) -> None:
    asked = [["a"], ["b", "c"], [], ["d"]]
    with Builds(write_kept, tmp_path, "model.onnx", processes=2) as builds:
        made = [json.loads(path.read_text()) for path in builds.many(asked)]
        single = json.loads(builds(["e"]).read_text())
    assert [m["kept"] for m in made] == asked
    assert all(m["pid"] != os.getpid() for m in made) and single["pid"] == os.getpid()
    assert len({path.parent for path in tmp_path.iterdir()}) == 1 and len(list(tmp_path.iterdir())) == 5


def test_one_process_builds_each_when_the_previous_one_is_used(tmp_path: Path) -> None:
    with Builds(write_kept, tmp_path, "model.onnx") as builds:
        lazy = builds.many([["a"], ["b"]])
        assert list(tmp_path.iterdir()) == []  # nothing built before it is asked for
        first = next(lazy)
        assert json.loads(first.read_text())["pid"] == os.getpid() and len(list(tmp_path.iterdir())) == 1


def test_a_build_that_fails_in_a_worker_raises_here(tmp_path: Path) -> None:
    with Builds(write_kept, tmp_path, "missing/model.onnx", processes=2) as builds, \
            pytest.raises(FileNotFoundError):
        list(builds.many([["a"], ["b"]]))


def test_small_models_and_little_memory_build_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builds_module, "usable_cores", lambda: 8)
    monkeypatch.setattr(builds_module, "available_memory", lambda: 64 * 2**30)
    assert build_processes(1_000_000) == 1
    assert build_processes(100_000_000) == builds_module.MAX_PROCESSES
    monkeypatch.setattr(builds_module, "available_memory", lambda: 500_000_000)
    assert build_processes(100_000_000) == 1
