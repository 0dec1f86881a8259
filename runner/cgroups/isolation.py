"""The runner's side: open (detect, check, sweep stale), a cgroup per task start, release after it exits."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from runner.cgroups.backend import Backend, CgroupError, directory, mounts, own_cgroups, process_start
from runner.cgroups.join import JOIN_KEY
from runner.cgroups.limits import Stats, TaskLimits, oom_reason
from runner.cgroups.v1 import V1
from runner.cgroups.v2 import V2

log = structlog.get_logger("rtx.runner")

RUNNER_DIR_RE = re.compile(r"^rtx-runner-(\d+)-(\d+)$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class TaskCgroup:
    name: str  # relative to the root: rtx-runner-<pid>-<start>/task-<allocation>-<n>
    limits: TaskLimits
    join_files: tuple[str, ...]  # what the task process writes its pid into
    created: float = field(default_factory=time.monotonic)


class Isolation:
    """One per runner process. Thread-safe: starts (work loop), reads (usage loop) and releases
    (reaper) run on different threads."""

    def __init__(self, backend: Backend, *, memory_margin: float, cpu_limit: bool) -> None:
        self.backend = backend
        self.memory_margin = memory_margin
        self.cpu_limit = cpu_limit
        self.runner_dir = f"rtx-runner-{os.getpid()}-{process_start(os.getpid())}"
        self._count = itertools.count(1)
        self._pending: set[str] = set()  # released but still busy: removed on a later sweep
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.backend.version

    @property
    def root(self) -> list[Path]:
        return self.backend.dirs()

    def start(self) -> list[str]:
        """Check, sweep what dead runners left, make this runner's directory. Returns the swept names."""
        self.backend.check()
        swept = self.sweep_stale()
        self.backend.prepare(self.runner_dir)
        return swept

    def sweep_stale(self) -> list[str]:
        """Remove the directories of runners that are gone (pid dead or reused), killing what is left
        in them: the tasks of a dead runner never run on. A live neighbour's directory is left alone."""
        swept = []
        for name in self.backend.children():
            match = RUNNER_DIR_RE.match(name)
            if match is None or name == self.runner_dir:
                continue
            pid, start = match.groups()
            if process_start(int(pid)) == start:
                continue  # its runner is alive
            if self.backend.remove(name, wait=2.0):
                swept.append(name)
            else:
                log.warning("could not remove a stale cgroup (still busy)", cgroup=name)
        return swept

    def create(self, allocation_id: str, memory_mb: int, cpu: float) -> TaskCgroup:
        limits = TaskLimits.of(memory_mb, cpu, memory_margin=self.memory_margin, cpu_limit=self.cpu_limit)
        name = f"{self.runner_dir}/task-{_SAFE.sub('_', allocation_id)}-{next(self._count)}"
        self.backend.mkdir(name)
        try:
            self.backend.configure(name, limits)
        except OSError as exc:
            self.backend.remove(name)
            raise CgroupError(
                f"cannot set the limits of cgroup {name}: {exc.filename}: {exc.strerror}"
            ) from None
        return TaskCgroup(name, limits, tuple(self.backend.join_files(name)))

    def stats(self, task: TaskCgroup) -> Stats | None:
        try:
            return self.backend.stats(task.name)
        except (OSError, ValueError):
            return None

    def release(self, task: TaskCgroup) -> Stats | None:
        """After the task process exited: its last stats, then kill what it left and remove its cgroup."""
        stats = self.stats(task)
        with self._lock:
            self._pending.add(task.name)
        self.sweep_pending()
        return stats

    def finish(self, task: TaskCgroup, failed: bool) -> tuple[Stats | None, str | None]:
        """``release``, and the OOM reason of a failed task the kernel's OOM killer struck (else None)."""
        stats = self.release(task)
        return stats, (oom_reason(stats, task.limits) if failed else None)

    def sweep_pending(self, wait: float = 0.0) -> None:
        with self._lock:
            pending = list(self._pending)
        for name in pending:
            try:
                removed = self.backend.remove(name, wait=wait)
            except OSError as exc:
                log.warning("could not remove a task cgroup", cgroup=name, error=str(exc))
                removed = False
            if removed:
                with self._lock:
                    self._pending.discard(name)

    def close(self) -> None:
        """At shutdown: every task cgroup, then this runner's directory (unless the runner lives in it)."""
        for child in self.backend.children(self.runner_dir):
            if child.startswith("task-"):
                with self._lock:
                    self._pending.add(f"{self.runner_dir}/{child}")
        self.sweep_pending(wait=2.0)
        if not getattr(self.backend, "moved_self", False) and not self._pending:
            self.backend.remove(self.runner_dir, wait=1.0)


def find_backend(root: str | None) -> Backend:
    """cgroup v2 where the root has memory and cpu, else v1 where both are mounted; else CgroupError."""
    found = mounts()
    own = own_cgroups()
    v2 = V2.find(found, own, root)
    if v2 is not None:
        return v2
    try:
        return V1.find(found, own, root)
    except CgroupError as exc:
        v2_mount = next((m for m in found if m.fstype == "cgroup2"), None)
        if v2_mount is None:
            raise
        missing = V2(v2_mount.point).missing()
        if missing:  # neither version has it
            raise CgroupError(
                f"{exc}; the cgroup v2 hierarchy at {v2_mount.point} lacks {' and '.join(missing)} too"
            ) from None
        V2(
            directory(v2_mount, root if root is not None else own.get("", "/"))
        ).check()  # names what the root lacks
        raise


def open_isolation(root: str | None, *, memory_margin: float, cpu_limit: bool) -> Isolation:
    """The runner's cgroups, ready for tasks; CgroupError (one line) if this host cannot give them."""
    isolation = Isolation(find_backend(root or None), memory_margin=memory_margin, cpu_limit=cpu_limit)
    swept = isolation.start()
    log.info(
        "cgroup isolation on",
        version=isolation.version,
        root=[str(p) for p in isolation.root],
        runner_cgroup=isolation.runner_dir,
        memory_margin=memory_margin,
        cpu_limit=cpu_limit,
        stale_removed=swept,
    )
    return isolation


def task_env(task: TaskCgroup) -> dict[str, str]:
    """What the runner adds to a task process's hand-over so that it joins ``task`` first."""
    return {JOIN_KEY: json.dumps(task.join_files)}
