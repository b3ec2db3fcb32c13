"""Other processes on the cores: wait for them to leave before the peers' benchmark session, and
measure their share during it (each round of the session also measures its own, pipeline.bench.noise).
On 2 cores, one other busy process running its own thread pool slowed an eager call from 20 ms to
900 ms (both pools spinning on the same cores), so a peers table is only as good as this."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.bench.noise import system_ticks

log = logging.getLogger("benchmarks.peers")


def cpu_times() -> tuple[float, float]:
    """(busy, total) seconds summed over every core since boot, from /proc/stat (steal counts as busy:
    the cores were not ours)."""
    busy, steal, total = system_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return (busy + steal) / hz, total / hz


def own_cpu() -> float:
    """CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def others_share(seconds: float = 1.0) -> float:
    """Share of all cores that other processes kept busy over ``seconds`` (this one sleeps meanwhile)."""
    busy0, total0 = cpu_times()
    mine0 = own_cpu()
    time.sleep(seconds)
    busy1, total1 = cpu_times()
    total = total1 - total0
    return max(0.0, (busy1 - busy0 - (own_cpu() - mine0)) / total) if total > 0 else 0.0


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Wait, at most ``max_wait`` seconds, until others use less than ``threshold`` of the cores; returns
    the last share seen."""
    start = time.perf_counter()
    share = others_share()
    while share > threshold and time.perf_counter() - start < max_wait:
        log.info("other processes keep %.0f%% of the cores busy; waiting (%.0f of %.0f s)", 100 * share,
                 time.perf_counter() - start, max_wait)
        time.sleep(4)
        share = others_share()
    return share


@contextmanager
def contention(into: dict[str, float]) -> Iterator[None]:
    """Measure the share of the cores other processes used while the block ran (children run by the
    block count as ours once finished); stores ``others_cpu_share`` in ``into``."""
    busy0, total0 = cpu_times()
    mine0 = own_cpu()
    try:
        yield
    finally:
        busy1, total1 = cpu_times()
        total = total1 - total0
        into["others_cpu_share"] = max(0.0, (busy1 - busy0 - (own_cpu() - mine0)) / total) if total > 0 else 0.0
