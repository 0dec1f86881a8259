"""What running tasks use, read from their cgroups (``--isolation cgroup``): the usage loop's sampler.

Exact and cheap: a few small files per task instead of a walk of every process tree, and it counts
whatever the task started, even a process that left its tree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from runner.cgroups.isolation import Isolation, TaskCgroup
from runner.cgroups.limits import MB


@dataclass(frozen=True)
class CgroupUsage:
    cpu_percent: float  # since the previous sample (first one: since the cgroup was made); 100 = a core
    rss_mb: int  # the working set: charged memory minus inactive page cache
    peak_mb: int | None  # the kernel's peak of the charged memory, where it keeps one


class CgroupSampler:
    def __init__(self, isolation: Isolation) -> None:
        self._isolation = isolation
        self._last: dict[str, tuple[float, float]] = {}  # cgroup name -> (cpu seconds, monotonic time)

    def sample(self, tasks: dict[str, TaskCgroup]) -> dict[str, CgroupUsage]:
        """{key: task cgroup} -> {key: usage} (a cgroup already gone is left out)."""
        now = time.monotonic()
        out: dict[str, CgroupUsage] = {}
        last: dict[str, tuple[float, float]] = {}
        for key, task in tasks.items():
            stats = self._isolation.stats(task)
            if stats is None:
                continue
            cpu = 0.0
            if stats.cpu_seconds is not None:
                seconds, at = self._last.get(task.name, (0.0, task.created))
                cpu = 100.0 * max(0.0, stats.cpu_seconds - seconds) / max(now - at, 1e-3)
                last[task.name] = (stats.cpu_seconds, now)
            peak = round(stats.peak_bytes / MB) if stats.peak_bytes is not None else None
            out[key] = CgroupUsage(round(cpu, 1), round(stats.working_set_bytes / MB), peak)
        self._last = last
        return out
