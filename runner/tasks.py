"""The tasks a runner runs: one ``TaskHandle`` each, in a table the runner's threads share.

The start path adds a handle once its task was handed to a spare process (runner.spares); the
reaper removes it when the task has ended (the spare's report, or the process's exit) and queued its
outcome. A spare runs one task at a time, so while a handle is here its spare's pid is its task's. The usage sampler and the metrics read snapshots (``handles()``);
what they learn about a task (memory seen) they write on its handle.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.cgroups import TaskCgroup
    from runner.spares import Spare


@dataclass
class TaskHandle:
    allocation_id: str
    runner_id: str
    label: str
    spare: Spare  # the process it runs in (reused for later tasks once this one ended)
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None
    term_sent_at: float | None = None
    pid: int | None = None  # kept apart: the pool closes the spare's process once it exited
    ended: bool = False  # the reaper saw it end (under its lock): never signalled after that
    # what it reserved, and what the usage loop (runner.usage) saw it use
    slots: int = 1
    cpu: float = 0.0
    memory_mb: int = 0
    log_path: str | None = None  # its Airflow task log, relative to [logging] base_log_folder
    rss_mb: int | None = None
    peak_rss_mb: int | None = None
    memory_warned: bool = False
    oom_kills_at_start: int | None = None  # the cgroup's OOM-kill count when it started
    cgroup: TaskCgroup | None = None  # its own cgroup (--isolation cgroup)


class RunningTasks:
    """Handles by allocation id, behind one lock (start, reaper, usage and drain threads share it)."""

    def __init__(self) -> None:
        self._by_id: dict[str, TaskHandle] = {}
        self._lock = threading.Lock()

    def add(self, handle: TaskHandle) -> None:
        with self._lock:
            self._by_id[handle.allocation_id] = handle

    def get(self, allocation_id: str) -> TaskHandle | None:
        with self._lock:
            return self._by_id.get(allocation_id)

    def remove(self, allocation_id: str) -> None:
        with self._lock:
            self._by_id.pop(allocation_id, None)

    def handles(self) -> list[TaskHandle]:
        """A snapshot: safe to iterate while tasks start and exit."""
        with self._lock:
            return list(self._by_id.values())

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def reserved(self) -> tuple[int, float, int, int]:
        """(slots, cpu, memory_mb, tasks) reserved by the tasks running here."""
        handles = self.handles()
        return (
            sum(h.slots for h in handles),
            round(sum(h.cpu for h in handles), 3),
            sum(h.memory_mb for h in handles),
            len(handles),
        )
