"""The peers report's pure logic on fake results: table rows, ratios, markdown, JSON and the plot.

The peers run itself (`make peers`) takes minutes and is not part of `make test`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peer_report import against, markdown, write  # noqa: E402
from benchmarks.peer_table import Target, best, p50_at, ratio, table_rows, worst  # noqa: E402

POINT = (1, 128)
DRIFT = (1.0, 1.1, 1.25, 1.1, 0.95, 1.0)  # every target's rounds: the machine slowed, then recovered


def bench(p50_b1: float, p50_b8: float, best_batch: int, best_throughput: float) -> dict[str, Any]:
    """A worker result with two grid points and a best-batch search."""
    rows = [{"batch": b, "seq": 128, "p50_ms": p, "p90_ms": p * 1.1, "p99_ms": p * 1.2, "cv": 0.02,
             "throughput": b * 1000 / p, "peak_rss_mb": 400.0, "round_p50_ms": [p * f for f in DRIFT]}
            for b, p in ((1, p50_b1), (8, p50_b8))]
    return {"rows": rows, "best_batch": {"seq": 128, "batch": best_batch, "throughput": best_throughput,
                                         "stopped_by": "plateau", "curve": []}}


def parity(max_abs: float, cos_min: float, passed: bool = True) -> dict[str, Any]:
    return {"passed": passed, "metrics": {"last_hidden_state": {"max_abs": max_abs, "cos_min": cos_min,
                                                               "sqnr_db": math.inf}},
            "failures": [] if passed else [f"last_hidden_state: cos_min {cos_min} < 0.99"], "tolerance": {}}


@pytest.fixture
def targets() -> list[Target]:
    return [
        Target("eager", "PyTorch", "eager", parity=parity(0.0, 1.0), bench=bench(20.0, 160.0, 8, 50.0)),
        Target("02_onnx_export", "this project", "onnx", parity=parity(3e-6, 1.0), shipped=True,
               bench=bench(10.0, 80.0, 16, 100.0), stats={"bytes": 90 * 2**20, "nodes": 600}),
        Target("optimum-O2", "Optimum", "onnx", parity=parity(3e-6, 1.0), bench=bench(12.5, 100.0, 8, 80.0),
               stats={"ops": {"Attention": 6}, "others_cpu_share": 0.4, "others_cpu_share_before": 0.0}),
        Target("ort-quantize_dynamic", "onnxruntime", "onnx", precision="int8", parity=parity(1.1, 0.75, False),
               bench=bench(5.0, 40.0, 32, 250.0)),
        Target("optimum-O3", "Optimum", "onnx", error="ValueError: could not optimize"),
    ]


def test_lookups_on_worker_results() -> None:
    result = bench(10.0, 80.0, 16, 100.0)
    assert p50_at(result, (8, 128)) == 80.0
    assert p50_at(result, (4, 128)) is None and p50_at(None, POINT) is None
    assert best(result) == (16, 128, 100.0)
    # a grid point faster than the search wins; no search at all falls back to the grid
    assert best({"rows": result["rows"], "best_batch": {"seq": 128, "batch": 2, "throughput": 1.0}}) == (8, 128, 100.0)
    assert best({"rows": []}) is None and best(None) is None
    assert worst(parity(0.5, 0.9), "cos_min", min) == 0.9 and worst(None, "max_abs", max) is None
    assert ratio(10.0, 4.0) == 2.5 and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


def test_rows_carry_speedups_and_shipped_ratios(targets: list[Target]) -> None:
    rows = {r["name"]: r for r in table_rows(targets, POINT)}
    assert rows["eager"]["speedup_vs_eager"] == 1.0
    assert rows["02_onnx_export"]["speedup_vs_eager"] == pytest.approx(2.0)
    shipped = rows["02_onnx_export"]
    assert shipped["shipped_latency_ratio"] == 1.0 and shipped["shipped_throughput_ratio"] == 1.0
    # above 1: the shipped artifact is faster than that target; below 1: slower
    assert rows["optimum-O2"]["shipped_latency_ratio"] == pytest.approx(1.25)
    assert rows["optimum-O2"]["shipped_throughput_ratio"] == pytest.approx(1.25)
    assert rows["ort-quantize_dynamic"]["shipped_latency_ratio"] == pytest.approx(0.5)
    assert rows["ort-quantize_dynamic"]["shipped_throughput_ratio"] == pytest.approx(0.4)
    assert rows["ort-quantize_dynamic"]["verdict"] == "FAIL" and rows["ort-quantize_dynamic"]["cos_min"] == 0.75
    assert rows["eager"]["ms_per_call_at_best"] == pytest.approx(160.0)
    failed = rows["optimum-O3"]
    assert failed["p50_ms"] is None and failed["speedup_vs_eager"] is None and failed["verdict"] == "-"
    assert failed["error"] == "ValueError: could not optimize"


def test_a_peer_that_drifts_apart_from_the_shipped_one_gets_a_wide_interval(targets: list[Target]) -> None:
    jittery = Target("jittery", "onnxruntime", "onnx", parity=parity(3e-6, 1.0), bench=bench(10.0, 80.0, 16, 100.0))
    row = jittery.bench["rows"][0]
    row["round_p50_ms"] = [p * j for p, j in zip(row["round_p50_ms"], (0.8, 1.2, 0.9, 1.3, 0.85, 1.1), strict=True)]
    rows = {r["name"]: r for r in table_rows([*targets, jittery], POINT)}
    low, high = rows["jittery"]["shipped_latency_ci95"]
    assert low < 1.0 < high and low <= rows["jittery"]["shipped_latency_ratio"] <= high
    assert against(rows["jittery"]).startswith("not told apart (")
    assert against(rows["optimum-O2"]) == "faster by 1.25x [1.25, 1.25]"


def test_rows_without_eager_or_shipped_leave_ratios_empty(targets: list[Target]) -> None:
    rows = table_rows([t for t in targets if t.name not in ("eager", "02_onnx_export")], POINT)
    assert all(r["speedup_vs_eager"] is None and r["shipped_latency_ratio"] is None for r in rows)


def meta() -> dict[str, Any]:
    return {"recipe": "minilm", "date": "2026-11-23", "point": list(POINT), "model": "packaged:all-MiniLM-L6-v2",
            "task": "feature-extraction", "ship_rule": {"step": None, "fastest_at": [1, 128]},
            "fingerprint": {"cpu": "AMD EPYC", "usable_cores": 2, "logical_cores": 2, "threads": 2,
                            "inter_op_threads": 1, "device": "cpu", "python": "3.11", "platform": "Linux"},
            "versions": {"onnxruntime": "1.32.0"}, "optimum_versions": {"optimum-onnx": "0.1.0"},
            "git": "abc123", "notes": ["a note"], "settings": {"grid": "b1, b8 at s128"}, "timings": {"bench": 12.0},
            "plot": "minilm-2026-11-23.png", "drift": ["Drift check: fine.", ""], "busy_threshold": 0.1}


def test_markdown_has_the_table_the_failures_and_the_environment(targets: list[Target]) -> None:
    text = markdown(targets, meta())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| target | made by"))
    assert "p50 ms (b1 s128)" in header and "shipped faster by" in header
    row = next(line for line in lines if line.startswith("| **02_onnx_export** (shipped)"))
    assert "| 10.00 |" in row and "| 2.00x [2.00, 2.00] |" in row and "| shipped | 1.00x |" in row
    o2 = next(line for line in lines if line.startswith("| optimum-O2"))
    assert "† 40%" in o2 and "| faster by 1.25x [1.25, 1.25] | 1.25x |" in o2
    quantized = next(line for line in lines if line.startswith("| ort-quantize_dynamic"))
    assert "| slower by 2.00x [2.00, 2.00] |" in quantized
    assert "This project ships **02_onnx_export** (the recipe's ship rule: the passing artifact fastest over eager " \
           "at b1 s128 when its 95% interval separates it from the next" in text
    assert "Fastest at b1 s128, passing the project's gate: **02_onnx_export** (10.00 ms). Fastest at b1 s128, " \
           "overall: **ort-quantize_dynamic** (5.00 ms, fails the gate with min cosine 0.7500)." in text
    assert "- **optimum-O3**: ValueError: could not optimize" in text
    assert "- **ort-quantize_dynamic**: parity gate: last_hidden_state: cos_min 0.75 < 0.99" in text
    assert "onnxruntime 1.32.0" in text and "optimum-onnx 0.1.0" in text and "commit abc123" in text
    assert "![speed-up over eager against parity](minilm-2026-11-23.png)" in text
    assert "Attention 6" in text and "40% / " not in text and "0% / 40%" in text
    # every table row has as many cells as its header
    for block in text.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({line.count(" | ") for line in rows if not line.startswith("|---")}) == 1, block


def test_write_gives_markdown_and_strict_json(targets: list[Target], tmp_path: Path) -> None:
    md, js = write(targets, meta(), tmp_path / "minilm-2026-11-23.md")
    assert md.read_text().startswith("# minilm against its peers (2026-11-23)")
    data = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert [t["name"] for t in data["targets"]] == [t.name for t in targets]
    assert data["targets"][0]["parity"]["metrics"]["last_hidden_state"]["sqnr_db"] == "inf"
    assert data["table"][1]["shipped"] is True


def test_plot_writes_a_png(targets: list[Target], tmp_path: Path) -> None:
    from benchmarks.peer_plot import plot

    path = plot(targets, POINT, "minilm against its peers", tmp_path / "peers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_a_peer_environment_script_gives_one_target_per_peer_with_its_kind(tmp_path: Path) -> None:
    from benchmarks.peer_build import EnvPeers, env_peers

    script = tmp_path / "fake_peers.py"
    script.write_text(
        "import json, sys, pathlib\n"
        "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
        "report = {'peers': {'fake-int8': {'path': 'x.xml', 'precision': 'int8', 'how': 'h', 'seconds': 1.0,\n"
        "                                  'kind': 'openvino'}},\n"
        "          'failed': {'fake-export': 'ValueError: no'}, 'versions': {'fake': '1.0'}}\n"
        "(out / 'fake.json').write_text(json.dumps(report))\n")
    env = EnvPeers("optimum-intel", "fake", Path(sys.executable), "fake-env", "fake.json")
    targets, report = env_peers(env, [str(script), str(tmp_path / "out")], tmp_path / "out", timeout=60)
    built, failed = targets
    assert (built.name, built.group, built.kind, built.precision, built.error) == (
        "fake-int8", "optimum-intel", "openvino", "int8", None)
    assert failed.name == "fake-export" and failed.error == "ValueError: no"
    assert report["versions"] == {"fake": "1.0"}


def test_a_missing_peer_environment_is_one_row_that_says_how_to_build_it(tmp_path: Path) -> None:
    from benchmarks.peer_build import EnvPeers, env_peers

    env = EnvPeers("Olive", "olive", tmp_path / "none" / "python", "olive-env", "olive_peers.json")
    targets, report = env_peers(env, ["olive_peers.py"], tmp_path, timeout=60)
    assert report == {} and len(targets) == 1
    assert targets[0].error == f"no environment at {tmp_path / 'none' / 'python'} (build it with `make olive-env`)"
