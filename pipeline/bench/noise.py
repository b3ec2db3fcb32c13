"""How disturbed the cores were while a benchmark ran, from /proc: CPU steal (the hypervisor gave the
cores to another guest) and the share of the cores that processes other than the benchmark's used.

On 2 cores, one other busy process running its own thread pool slowed an eager call from 20 ms to
900 ms, and the same artifacts measured an hour apart gave 1.81x and 3.55x over eager: a round of
measurements is only as good as the machine was quiet during it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU ticks at one moment: all cores (busy, steal, total) and the watched processes."""

    busy: int
    steal: int
    total: int
    watched: int


@dataclass(frozen=True)
class Disturbance:
    """Between two samples: the share of all CPU time stolen, and the share other processes used."""

    steal: float
    others: float

    def exceeds(self, max_steal: float, max_others: float) -> str | None:
        """Why this interval is too disturbed to count, or None when it is quiet enough."""
        reasons = []
        if self.steal > max_steal:
            reasons.append(f"steal {self.steal:.0%} > {max_steal:.0%}")
        if self.others > max_others:
            reasons.append(f"other processes used {self.others:.0%} of the cores > {max_others:.0%}")
        return "; ".join(reasons) or None


def system_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) ticks over every core since boot, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        values = [int(v) for v in handle.readline().split()[1:9]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    total = sum(values)
    return total - idle - steal, steal, total


def process_ticks(pid: int) -> int:
    """User and system ticks of one process (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def sample(pids: Iterable[int]) -> CpuSample:
    """The CPU counters now, with ``pids`` (the benchmark's own processes) as the watched ones."""
    busy, steal, total = system_ticks()
    return CpuSample(busy, steal, total, sum(process_ticks(pid) for pid in pids))


def disturbance(before: CpuSample, after: CpuSample) -> Disturbance:
    """Steal and other processes' share of all CPU time between two samples of the same processes."""
    total = after.total - before.total
    if total <= 0:
        return Disturbance(0.0, 0.0)
    others = (after.busy - before.busy) - (after.watched - before.watched)
    return Disturbance(max(0.0, (after.steal - before.steal) / total), max(0.0, others / total))
