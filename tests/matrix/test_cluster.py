"""A matrix of tiny models on a local Ray cluster of 2 worker processes: a cell with a bad recipe, a
cell whose worker is killed mid-build, and one that nothing disturbs; then the same matrix again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray", reason="ray is not installed (the matrix extra: pip install -e '.[matrix]')")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICK_BENCH = {"batches": [1], "seqs": [8], "rounds": 3, "ship_point_rounds": 4, "min_seconds": 0.3, "min_repeats": 5,
               "warmup_seconds": 0.01, "throughput_seconds": 0.05, "pause_seconds": 0.01, "best_batch": None,
               "real_data": None, "max_others_cpu": 1, "max_steal": 1,
               "max_baseline_spread": 1000}


def children_running(marker: str) -> list[tuple[int, int]]:
    """(pid, parent pid) of every process whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline and "pipeline optimize" in cmdline:
            found.append((int(entry.name), ppid))
    return found


def kill_worker_of(marker: str, killed: dict[str, Any], deadline: float) -> None:
    """Wait for the optimize child of the cell whose folder is ``marker``, let it work a moment, then
    kill the Ray worker that started it (SIGKILL, as the kernel's out-of-memory killer would)."""
    while time.time() < deadline:
        found = children_running(marker)
        if found:
            time.sleep(1.5)
            child, worker = found[0]
            os.kill(worker, signal.SIGKILL)
            killed.update(worker=worker, child=child, at=time.time())
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_config: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("matrix")
    recipe = {"model": {"source": str(tiny_bert_config), "tokenizer": "packaged:all-MiniLM-L6-v2"},
              "task": "feature-extraction", "passes": [{"onnx_export": {"exporter": "torchscript"}}],
              "verify": {"shapes": [[1, 9]], "sentence_batches": 1}, "bench": QUICK_BENCH,
              "ship": {"fastest_at": [1, 8]}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    matrix = {"name": "tiny", "recipe": "tiny.yaml",
              "models": {"steady": {}, "killed": {"set": {"model.seed": 1}},
                         "bad": {"set": {"passes[0].onnx_export.opset": 3}}},
              "resources": {"build_cpus": 1, "max_retries": 2}}
    (folder / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1"}
    command = [sys.executable, "-m", "pipeline", "matrix", "matrix.yaml", "--num-cpus", "2"]
    killed: dict[str, Any] = {}
    killer = threading.Thread(target=kill_worker_of, args=("cells/killed", killed, time.time() + 240))
    killer.start()
    first = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    killer.join()
    results = folder / "artifacts/matrix/tiny"
    written = {"matrix": json.loads((results / "matrix.json").read_text()),
               "report": (results / "matrix.md").read_text()}
    begin = time.perf_counter()
    second = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    return {"first": first, "second": second, "second_seconds": time.perf_counter() - begin, "killed": killed,
            "folder": folder, **written}


def cells_of(matrix: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["cell"]["name"]: entry for entry in matrix["cells"]}


def test_a_bad_cell_and_a_killed_worker_do_not_stop_the_others(matrix_run: dict[str, Any]) -> None:
    first = matrix_run["first"]
    assert first.returncode == 2, first.stderr[-3000:]  # the largest exit code of the cells: the bad recipe
    cells = cells_of(matrix_run["matrix"])
    bad = cells["bad"]
    assert bad["exit_code"] == 2 and "opset" in bad["message"] and bad["phases"] == {}

    killed = matrix_run["killed"]
    assert killed, "the killed cell's build never started"
    retried = cells["killed"]
    assert retried["exit_code"] == 0, retried["message"]
    assert retried["phases"]["build"]["pid"] != killed["worker"]  # Ray ran the build again in a new worker
    assert retried["phases"]["build"]["started"] > killed["at"]
    with pytest.raises(ProcessLookupError):
        os.kill(killed["child"], 0)  # the killed worker's optimize child died with it

    steady = cells["steady"]
    assert steady["exit_code"] == 0 and steady["summary"]["ratio"]["rounds"] == 4
    for entry in (steady, retried):
        assert entry["summary"]["shipped_step"] == "onnx_export" and entry["summary"]["parity_passed"]
        assert entry["summary"]["machine"]["cpu"] and entry["phases"]["bench"]["exit_code"] == 0
    assert "| bad | bad |" in matrix_run["report"] and "## Best per model" in matrix_run["report"]


def test_benchmarks_never_overlap_each_other_or_a_build_on_one_node(matrix_run: dict[str, Any]) -> None:
    phases = [phase for entry in matrix_run["matrix"]["cells"] for phase in entry["phases"].values()]
    benches = [p for p in phases if p["phase"] == "bench"]
    assert len(benches) == 2
    for bench in benches:
        for other in phases:
            if other is bench or other["node"] != bench["node"]:
                continue
            overlap = min(bench["finished"], other["finished"]) - max(bench["started"], other["started"])
            assert overlap <= 0, f"{bench['cell']} bench overlaps {other['cell']} {other['phase']} by {overlap:.1f} s"


def test_a_second_run_reuses_every_finished_cell_without_starting_ray(matrix_run: dict[str, Any]) -> None:
    second = matrix_run["second"]
    assert second.returncode == 2, second.stderr[-3000:]
    cells = cells_of(json.loads((matrix_run["folder"] / "artifacts/matrix/tiny/matrix.json").read_text()))
    assert cells["steady"]["reused"] and cells["killed"]["reused"]
    assert second.stderr.count("reused (exit 0)") == 2 and "started on node" not in second.stderr
    assert matrix_run["second_seconds"] < 10
