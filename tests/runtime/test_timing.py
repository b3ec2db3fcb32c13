"""The timing protocol on controlled calls: warm-up, stopping rules, percentiles, flags."""

from __future__ import annotations

import time

import pytest

from pipeline.bench.orchestrate import flag_reruns
from pipeline.runtime.timing import CudaEventTimer, Protocol, Timer, latencies, summarize, throughput, warm_up


def test_warm_up_needs_both_count_and_time() -> None:
    calls = []
    count = warm_up(lambda: calls.append(1), Timer(), Protocol(warmup=3, warmup_seconds=0.05))
    assert count == len(calls) >= 3
    slow = warm_up(lambda: time.sleep(0.03), Timer(), Protocol(warmup=1, warmup_seconds=0.05))
    assert slow >= 2


def test_latencies_reach_min_repeats_and_min_seconds_but_stop_at_max() -> None:
    times = latencies(lambda: None, Timer(), Protocol(min_repeats=50, min_seconds=0.02))
    assert len(times) >= 50
    capped = latencies(lambda: time.sleep(0.01), Timer(), Protocol(min_repeats=10_000, min_seconds=0, max_seconds=0.1))
    assert 3 <= len(capped) < 100


def test_the_cap_is_kept_not_passed_by_a_slow_call() -> None:
    started = time.perf_counter()
    slow = latencies(lambda: time.sleep(0.06), Timer(), Protocol(min_repeats=10, min_seconds=0, max_seconds=0.1))
    assert len(slow) == 1 and time.perf_counter() - started < 0.1  # a second call would end at 0.12 s
    once = latencies(lambda: time.sleep(0.2), Timer(), Protocol(min_repeats=10, min_seconds=0, max_seconds=0.1))
    assert len(once) == 1  # the first call always runs


def test_the_timer_waits_for_the_device() -> None:
    synced = []
    timer = Timer(lambda: (time.sleep(0.02), synced.append(1)))
    assert timer.time_ms(lambda: None) >= 20 and synced == [1]


def test_throughput_is_measured_over_time_with_one_sync() -> None:
    syncs = []
    calls, seconds = throughput(lambda: time.sleep(0.005), lambda: syncs.append(1), Protocol(throughput_seconds=0.05))
    assert seconds >= 0.05 and calls >= 3 and syncs == [1]


def test_summary_percentiles_and_unstable_flag() -> None:
    steady = summarize([10.0] * 99 + [11.0], cv_threshold=0.1)
    assert steady["p50_ms"] == 10.0 and steady["p99_ms"] > 10.0 and not steady["unstable"]
    noisy = summarize([1.0, 10.0] * 20, cv_threshold=0.1)
    assert noisy["unstable"] and noisy["cv"] > 0.5 and noisy["repeats"] == 40


def test_rerun_that_moved_more_than_the_tolerance_is_flagged() -> None:
    previous = {"key": "k", "rows": [{"batch": 1, "seq": 16, "p50_ms": 10.0}, {"batch": 8, "seq": 16, "p50_ms": 10.0}]}
    result = {"key": "k", "rows": [{"batch": 1, "seq": 16, "p50_ms": 10.5, "unstable": False},
                                   {"batch": 8, "seq": 16, "p50_ms": 12.0, "unstable": False}]}
    flag_reruns(result, previous, tolerance=0.10)
    assert not result["rows"][0]["unstable"] and result["rows"][1]["unstable"]
    assert "p50 moved +20%" in result["rows"][1]["unstable_reasons"][0]


def test_a_changed_artifact_is_not_a_rerun() -> None:
    previous = {"key": "old artifact", "rows": [{"batch": 1, "seq": 16, "p50_ms": 10.0}]}
    result = {"key": "new artifact", "rows": [{"batch": 1, "seq": 16, "p50_ms": 5.0, "unstable": False}]}
    flag_reruns(result, previous, tolerance=0.10)
    assert not result["rows"][0]["unstable"] and "p50_change_from_previous" not in result["rows"][0]


def test_cuda_event_timer_times_gpu_work() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randn(2048, 2048, device="cuda")
    ms = CudaEventTimer().time_ms(lambda: x @ x)
    assert ms > 0
