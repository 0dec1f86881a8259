"""What a task's cgroup is held to, and what the kernel says it used."""

from __future__ import annotations

import math
from dataclasses import dataclass

MB = 2**20
CPU_PERIOD_US = 100_000  # the kernel's default CFS period
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota


@dataclass(frozen=True)
class TaskLimits:
    """``memory_mb`` and ``cpu`` are the reservation; the rest is what the kernel is told.

    No memory request: no memory limit. No CPU request: the smallest weight (the task still gets
    idle CPU, but yields to every task that reserved some) and never a quota."""

    memory_mb: int
    cpu: float
    memory_limit_bytes: int | None
    cpu_quota_us: int | None  # per CPU_PERIOD_US; None = no hard quota

    @classmethod
    def of(cls, memory_mb: int, cpu: float, *, memory_margin: float, cpu_limit: bool) -> TaskLimits:
        # round() first: 50 * 1.1 is 55.000000000000007 in floating point, not a reason for 56 MB
        limit = math.ceil(round(memory_mb * (1 + memory_margin / 100.0), 6)) * MB if memory_mb > 0 else None
        quota = max(MIN_QUOTA_US, round(cpu * CPU_PERIOD_US)) if cpu_limit and cpu > 0 else None
        return cls(memory_mb, cpu, limit, quota)

    @property
    def memory_limit_mb(self) -> int | None:
        return None if self.memory_limit_bytes is None else self.memory_limit_bytes // MB

    def cpu_shares(self) -> int:
        """cgroup v1 ``cpu.shares``: 1024 per reserved core (the kernel's default is one core's)."""
        return min(262_144, max(2, round(1024 * self.cpu)))

    def cpu_weight(self) -> int:
        """cgroup v2 ``cpu.weight``: 100 per reserved core (the kernel's default is one core's)."""
        return min(10_000, max(1, round(100 * self.cpu)))


@dataclass(frozen=True)
class Stats:
    """One reading of a task's cgroup. None: that counter does not exist on this kernel."""

    memory_bytes: int  # what the kernel charges (the limit applies to this, page cache included)
    working_set_bytes: int  # memory_bytes minus inactive page cache: what the task really holds
    peak_bytes: int | None
    limit_bytes: int | None
    cpu_seconds: float | None  # CPU time of the whole tree since the cgroup was made
    oom_kills: int | None  # processes the kernel's OOM killer killed in this cgroup
    limit_hits: int | None  # v1 memory.failcnt: times the limit was reached (reclaim or kill)
    throttled: int | None  # CFS periods in which the quota stopped the task

    @property
    def peak_mb(self) -> int:
        return round((self.peak_bytes if self.peak_bytes is not None else self.memory_bytes) / MB)


def oom_reason(stats: Stats | None, limits: TaskLimits) -> str | None:
    """ "killed: out of memory: ..." when the kernel's OOM killer struck this task's cgroup, else None.

    On a v1 kernel without the ``oom_kill`` counter (before 4.13), a failed task whose cgroup hit its
    limit counts as killed by it (the caller only asks for failed tasks)."""
    if stats is None or limits.memory_limit_bytes is None:
        return None
    killed = stats.oom_kills > 0 if stats.oom_kills is not None else bool(stats.limit_hits)
    if not killed:
        return None
    return (
        f"killed: out of memory: used {stats.peak_mb} MB, limit {limits.memory_limit_mb} MB "
        f"(reserved {limits.memory_mb} MB)"
    )
