"""The timing protocol: warm up by count and by time, repeat until a count and a duration are both
reached, then summarize with percentiles and the spread.

A timed call runs on inputs already staged on the device and, on GPU, is synchronized before the
clock stops (CUDA events for torch; IO binding plus output synchronization for onnxruntime), so a
latency never hides queued work and never includes a host copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

Call = Callable[[], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and how much to measure at each point."""

    warmup: int = 3
    warmup_seconds: float = 0.5
    min_repeats: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 8.0
    throughput_seconds: float = 1.0
    cv_threshold: float = 0.10


class Timer:
    """Wall-clock timer for host-side work: time.perf_counter around call and sync."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync or (lambda: None)

    def time_ms(self, call: Call) -> float:
        """Milliseconds for one synchronized call."""
        start = time.perf_counter()
        call()
        self.sync()
        return (time.perf_counter() - start) * 1e3


class CudaEventTimer(Timer):
    """GPU timer: CUDA events recorded around the call on the current stream, then synchronized."""

    def __init__(self) -> None:
        import torch

        super().__init__(torch.cuda.synchronize)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def time_ms(self, call: Call) -> float:
        self._start.record()
        call()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


def run_until(measure: Callable[[], T], count: int, seconds: float, cap_seconds: float | None = None) -> list[T]:
    """``measure``'s results, run until both ``count`` runs and ``seconds`` are reached: the one
    repetition loop of every warm-up and every timed series.

    ``cap_seconds`` stops it sooner: after the first run, no run starts that would end past the cap,
    judged by the longest run so far, so the cap is kept rather than passed by up to one run (at
    batch 32 one call took most of a second)."""
    results: list[T] = []
    start = previous = time.perf_counter()
    longest = 0.0
    while len(results) < count or previous - start < seconds:
        results.append(measure())
        now = time.perf_counter()
        longest, previous = max(longest, now - previous), now
        if cap_seconds is not None and now - start + longest > cap_seconds:
            break
    return results


def warm_up(call: Call, timer: Timer, protocol: Protocol) -> int:
    """Run until both the warm-up count and the warm-up time are reached; returns the count."""
    return len(run_until(lambda: timer.time_ms(call), protocol.warmup, protocol.warmup_seconds))


def latencies(call: Call, timer: Timer, protocol: Protocol) -> list[float]:
    """Per-call latencies (ms) until min_repeats and min_seconds are both reached (max_seconds caps)."""
    return run_until(lambda: timer.time_ms(call), protocol.min_repeats, protocol.min_seconds, protocol.max_seconds)


def throughput(call: Call, sync: Callable[[], None], protocol: Protocol) -> tuple[int, float]:
    """Back-to-back calls, synchronized once at the end: (calls, seconds) over at least throughput_seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        if time.perf_counter() - start >= protocol.throughput_seconds and calls >= 3:
            sync()
            return calls, time.perf_counter() - start


def summarize(times_ms: list[float], cv_threshold: float) -> dict[str, Any]:
    """p50, p90, p99, mean, standard deviation, coefficient of variation, and the unstable flag."""
    values = np.asarray(times_ms, dtype=np.float64)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "std_ms": std,
            "min_ms": float(values.min()), "cv": cv, "repeats": int(values.size), "unstable": bool(cv > cv_threshold)}
