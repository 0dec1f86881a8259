"""What the runner's tasks use: sampled every ``usage_interval`` seconds in a loop of its own.

Each sample walks the process tree of every running task (the task process the runner started and
everything under it: Airflow's supervisor, the task it forks, whatever that starts) and records

* ``cpu_percent``: CPU over the time since the previous sample, summed over the tree (100 = one
  core busy). A process first seen counts its average since it started; for a reused task process
  (``--tasks-per-process``, runner.spares: Airflow's supervisor, whose own CPU is small next to the
  task it forks) that first sample of each task is the process's average over its earlier tasks too,
  or, when sampled during its previous task, its CPU since that sample (at most one interval);
* ``rss_mb``: the tree's memory. On Linux this is the sum of each process's PSS (proportional set
  size: its resident memory, with pages shared by several processes divided between them), so the
  pages Airflow's supervisor and its forked task share are counted once, not twice as a plain sum
  of RSS would; where PSS cannot be read, the sum of RSS.

With ``--isolation cgroup`` the same figures are read from each task's own cgroup instead
(``runner.cgroups.sampler``): CPU time, the working set (charged memory less inactive page cache)
and the kernel's peak; exact, cheaper, and counting a process that left the task's tree.

It writes them, with the peak memory seen, onto every running allocation in ONE statement
(``update_usage``, guarded by runner and state). The loop has its own connection and thread, so a
slow sample or a slow database never delays task starts.

Memory over the reservation (an allocation with ``memory_mb`` > 0):

* once per task: a warning in the runner's log and, when the workload names its Airflow task log
  (``log_path``), one JSON line appended to that log, so the task's owner sees it in the UI;
* with ``enforce_memory`` (``--enforce-memory``), a task past ``memory_mb * (1 + memory_margin/100)``
  is stopped through the runner's ordinary stop path, with a reason that says why.

It also caches the kernel's OOM-kill counter of the runner's cgroup, so that the exit of a task the
kernel killed can be explained as "likely out of memory" (see ``runner.reaper.describe_exit``).

The sampler knows the runner only through what it is handed: a view of the running tasks (their
``TaskHandle`` snapshots, runner.tasks), the stop path, and the metrics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psutil
import structlog

from runner.cgroups.sampler import CgroupSampler
from runner.tasks import TaskHandle
from runtime_executor.db.connection import Database
from runtime_executor.loop import Loop
from runtime_executor.settings import Settings, _airflow_cfg

if TYPE_CHECKING:
    from runner.cgroups import Isolation
    from runner.metrics import RunnerMetrics

log = structlog.get_logger("rtx.runner")

_HAS_PSS = os.path.exists("/proc/self/smaps_rollup")  # cheap PSS; without it PSS means parsing smaps
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class Usage:
    cpu_percent: float
    rss_mb: int
    peak_mb: int | None = None  # the kernel's peak, where usage comes from a cgroup


# -- sampling ----------------------------------------------------------------------------------


class TreeSampler:
    """CPU and memory of process trees. Keeps the ``psutil.Process`` of every process it saw, so
    the CPU percent of the next sample covers exactly the time since this one."""

    def __init__(self) -> None:
        self._known: dict[int, psutil.Process] = {}

    def sample(self, roots: dict[str, int]) -> dict[str, Usage]:
        """{key: root pid} -> {key: usage} (a root that is gone is left out)."""
        if not roots:
            self._known.clear()
            return {}
        children: dict[int, list[psutil.Process]] = {}
        procs: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["ppid"]):  # one scan of /proc for every tree
            ppid = proc.info.get("ppid")
            procs[proc.pid] = proc
            if ppid is not None:
                children.setdefault(ppid, []).append(proc)
        out: dict[str, Usage] = {}
        seen: dict[int, psutil.Process] = {}
        for key, root_pid in roots.items():
            root = procs.get(root_pid)
            if root is None:
                continue
            tree, stack = [], [root]
            while stack:
                proc = stack.pop()
                tree.append(proc)
                stack.extend(children.get(proc.pid, ()))
            cpu = 0.0
            mem = 0
            alive = False
            for proc in tree:
                try:
                    cpu += self._cpu_percent(proc)
                    mem += _memory_bytes(proc)
                    alive = True
                except _GONE:
                    continue
                seen[proc.pid] = proc
            if alive:
                out[key] = Usage(round(cpu, 1), int(round(mem / 2**20)))
        self._known = seen
        return out

    def _cpu_percent(self, proc: psutil.Process) -> float:
        if self._known.get(proc.pid) is proc:
            return proc.cpu_percent(None)  # since the previous sample
        proc.cpu_percent(None)  # starts the interval for the next sample
        times = proc.cpu_times()
        age = max(time.time() - proc.create_time(), 0.1)
        return 100.0 * (times.user + times.system) / age  # first sight: the average since it started


def _memory_bytes(proc: psutil.Process) -> int:
    if _HAS_PSS:
        with contextlib.suppress(psutil.AccessDenied, AttributeError):
            return proc.memory_full_info().pss
    return proc.memory_info().rss


# -- the kernel's OOM killer -------------------------------------------------------------------


@functools.cache
def _oom_counter_file() -> Path | None:
    """Where the kernel counts OOM kills for this process's cgroup (v1 or v2), else system-wide."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            rel = path.lstrip("/")
            if controllers == "":  # cgroup v2
                candidates += [
                    Path("/sys/fs/cgroup", rel, "memory.events"),
                    Path("/sys/fs/cgroup/memory.events"),
                ]
            elif "memory" in controllers.split(","):
                candidates += [
                    Path("/sys/fs/cgroup/memory", rel, "memory.oom_control"),
                    Path("/sys/fs/cgroup/memory/memory.oom_control"),
                ]
    candidates.append(Path("/proc/vmstat"))
    for path in candidates:
        if _read_oom_kills(path) is not None:
            return path
    return None


def _read_oom_kills(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def oom_kills() -> int | None:
    """The kernel's OOM-kill count for this runner's cgroup (None where it cannot be read)."""
    path = _oom_counter_file()
    return _read_oom_kills(path) if path is not None else None


# -- the task's own Airflow log ----------------------------------------------------------------


@functools.cache
def base_log_folder() -> Path:
    """Airflow's ``[logging] base_log_folder``, resolved as Airflow does without importing it:
    ``AIRFLOW__LOGGING__BASE_LOG_FOLDER``, then airflow.cfg, then ``$AIRFLOW_HOME/logs``."""
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    value = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER")
    if not value:
        cfg = _airflow_cfg()
        if cfg.has_option("logging", "base_log_folder"):
            value = cfg.get("logging", "base_log_folder")
    if not value:
        return home / "logs"
    return Path(value.replace("{AIRFLOW_HOME}", str(home))).expanduser()


def log_path_of(workload_json: str | None) -> str | None:
    """The ``log_path`` of an Airflow workload (relative to the base log folder), if it has one."""
    if not workload_json:
        return None
    try:
        value = json.loads(workload_json).get("log_path")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def append_task_log(log_path: str, level: str, event: str, **fields: Any) -> bool:
    """Append one line to the task's Airflow log, in the JSON shape its supervisor writes
    (``{"timestamp": ..., "level": ..., "event": ..., "logger": ...}``), so the UI shows it.
    Only to a log that exists (the supervisor creates it); True when written."""
    path = base_log_folder() / log_path
    record = {
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": level,
        "event": event,
        **fields,
        "logger": "rtx.runner",
    }
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return False
    try:
        os.write(fd, line)  # one O_APPEND write: never interleaved with the supervisor's lines
    finally:
        os.close(fd)
    return True


# -- the loop ----------------------------------------------------------------------------------


class RunningTaskView(Protocol):
    def handles(self) -> list[TaskHandle]:
        """A snapshot of the running tasks' handles."""
        ...


class UsageMonitor:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        tasks: RunningTaskView,
        stop: Callable[[str, str], None],
        metrics: RunnerMetrics,
        isolation: Isolation | None = None,
    ) -> None:
        self.settings = settings
        self.sampler = TreeSampler()
        # --isolation cgroup: each task's own cgroup, exact and counting what left its process tree
        self.cgroup_sampler = CgroupSampler(isolation) if isolation is not None else None
        self._db = db  # its own connection: a slow sample or statement never delays starts
        self._tasks = tasks
        self._stop = stop  # (allocation_id, reason): the runner's ordinary stop path
        self._metrics = metrics
        self.loop = Loop("usage", self.tick, settings.usage_interval)
        self.oom_kills: int | None = oom_kills()

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()  # the runner, which opened its connection, closes it

    def tick(self) -> bool:
        handles = self._tasks.handles()
        samples = self._sample(handles)
        self.oom_kills = oom_kills()
        used_cpu = used_mb = 0.0
        rows: list[tuple[str, str, float, int]] = []
        for handle in handles:
            usage = samples.get(handle.allocation_id)
            if usage is None:
                continue
            used_cpu += usage.cpu_percent
            used_mb += usage.rss_mb
            handle.rss_mb = usage.rss_mb
            handle.peak_rss_mb = max(handle.peak_rss_mb or 0, usage.rss_mb, usage.peak_mb or 0)
            rows.append((handle.allocation_id, handle.runner_id, usage.cpu_percent, usage.rss_mb))
            if handle.memory_mb > 0 and usage.rss_mb > handle.memory_mb:
                self._over_reservation(handle, usage)
        self._metrics.set_used(used_cpu, used_mb)
        if rows:
            with self._db.statements() as gw:
                gw.update_usage(*zip(*rows, strict=True))
        return False

    def _sample(self, handles: list[TaskHandle]) -> dict[str, Usage]:
        if self.cgroup_sampler is None:
            return self.sampler.sample({h.allocation_id: h.pid for h in handles if h.pid})
        cgroups = {h.allocation_id: h.cgroup for h in handles if h.cgroup is not None}
        read = self.cgroup_sampler.sample(cgroups)
        return {key: Usage(u.cpu_percent, u.rss_mb, u.peak_mb) for key, u in read.items()}

    def _over_reservation(self, handle: TaskHandle, usage: Usage) -> None:
        margin = self.settings.memory_margin
        limit = handle.memory_mb * (1 + margin / 100.0)
        if not handle.memory_warned:
            handle.memory_warned = True
            self._metrics.memory_exceeded.labels(self._metrics.runner, "warned").inc()
            event = (
                f"rtx: this task uses {usage.rss_mb} MB of memory, more than its reservation of "
                f"{handle.memory_mb} MB; reserve more (executor_config / resources) or use less"
            )
            if self.settings.enforce_memory:
                event += f"; it is stopped past {limit:.0f} MB (--enforce-memory, +{margin:g}%)"
            log.warning(
                "task over its memory reservation",
                allocation_id=handle.allocation_id,
                task=handle.label,
                rss_mb=usage.rss_mb,
                memory_mb=handle.memory_mb,
                enforce=self.settings.enforce_memory,
            )
            if handle.log_path:
                append_task_log(
                    handle.log_path, "warning", event, rss_mb=usage.rss_mb, reservation_mb=handle.memory_mb
                )
        if self.settings.enforce_memory and usage.rss_mb > limit and handle.stop_reason is None:
            reason = (
                f"task used {usage.rss_mb} MB, over its memory reservation of {handle.memory_mb} MB "
                f"(+{margin:g}%); stopped by --enforce-memory"
            )
            self._metrics.memory_exceeded.labels(self._metrics.runner, "stopped").inc()
            if handle.log_path:
                append_task_log(handle.log_path, "error", f"rtx: {reason}")
            self._stop(handle.allocation_id, reason)
