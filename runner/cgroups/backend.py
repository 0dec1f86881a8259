"""The one interface both cgroup versions implement, and what they share (mounts, files, kill, rmdir).

A backend knows the directory of a cgroup name (a path relative to the runner's root, such as
``rtx-runner-1-2/task-x-1``) in each hierarchy it uses: one for v2, one per controller for v1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from runner.cgroups.limits import Stats, TaskLimits

FIX = "run the runner as root, under systemd with Delegate=yes, or with --cgroup-root naming a cgroup it may write"

READ_ONLY_FIX = (
    "the cgroup file system is mounted read-only for the runner (systemd: ProtectControlGroups=no)"
)


class CgroupError(RuntimeError):
    """A cgroup the runner needs but cannot have; the message is one line naming what and how to fix it."""


@dataclass(frozen=True)
class Mount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    point: Path
    root: str  # the cgroup path mounted there (not "/" inside some containers)
    controllers: frozenset[str]  # v1: from the super options; v2: empty (read cgroup.controllers)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    out = []
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            point = Path(fields[4].replace("\\040", " "))
            controllers = frozenset(tail[2].split(",")) if tail[0] == "cgroup" else frozenset()
            out.append(Mount(tail[0], point, fields[3], controllers))
    return out


def own_cgroups(path: str = "/proc/self/cgroup") -> dict[str, str]:
    """{controller: cgroup path} of this process; the v2 hierarchy under the key ""."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            _, controllers, cgroup = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                out[name] = cgroup
    return out


def directory(mount: Mount, cgroup: str) -> Path:
    """The directory of ``cgroup`` (a path in the hierarchy) under ``mount``."""
    cgroup, root = "/" + cgroup.strip("/"), "/" + mount.root.strip("/")
    if root != "/" and (cgroup == root or cgroup.startswith(root + "/")):
        cgroup = cgroup[len(root) :]
    return mount.point.joinpath(cgroup.lstrip("/")) if cgroup.strip("/") else mount.point


def read(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def read_int(path: Path) -> int | None:
    try:
        value = read(path)
    except OSError:
        return None
    return None if value == "max" else int(value)


def keyed(path: Path) -> dict[str, int]:
    """A flat-keyed file (``memory.stat``, ``memory.events``, ``cpu.stat``, ``memory.oom_control``)."""
    try:
        text = read(path)
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out


def write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in read(path / "cgroup.procs").split()]
    except (OSError, ValueError):
        return []


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Backend(ABC):
    version: str

    @abstractmethod
    def dirs(self, name: str = "") -> list[Path]:
        """The directories of cgroup ``name`` (relative to the root), one per hierarchy used."""

    @abstractmethod
    def check(self) -> None:
        """Raise CgroupError unless the controllers are there and the root is writable."""

    def prepare(self, runner_dir: str) -> None:
        """Make the runner's directory (and, for v2, hand the controllers down to it)."""
        self.mkdir(runner_dir, exist_ok=True)

    @abstractmethod
    def configure(self, name: str, limits: TaskLimits) -> None:
        """Write the limits of a freshly made cgroup."""

    @abstractmethod
    def stats(self, name: str) -> Stats | None:
        """The kernel's counters of cgroup ``name``; None if it is gone."""

    def join_files(self, name: str) -> list[str]:
        """The ``cgroup.procs`` files a task writes its pid into to join cgroup ``name``."""
        return [str(d / "cgroup.procs") for d in self.dirs(name)]

    # -- shared --------------------------------------------------------------------------------------
    def mkdir(self, name: str, *, exist_ok: bool = False) -> None:
        made = []
        try:
            for d in self.dirs(name):
                if not (exist_ok and d.is_dir()):
                    d.mkdir()
                    made.append(d)
        except OSError as exc:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            fix = READ_ONLY_FIX if exc.errno == errno.EROFS else FIX
            raise CgroupError(
                f"--isolation cgroup: cannot create cgroup {exc.filename}: {exc.strerror}; {fix}"
            ) from None

    def children(self, name: str = "") -> list[str]:
        """Names of the child cgroups of ``name`` in any hierarchy."""
        out: set[str] = set()
        for d in self.dirs(name):
            with contextlib.suppress(OSError):
                out |= {e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False)}
        return sorted(out)

    def pids(self, name: str) -> set[int]:
        return {pid for d in self.dirs(name) for pid in procs(d)}

    def kill(self, name: str) -> None:
        """SIGKILL every process in cgroup ``name`` (and its children cgroups)."""
        for child in self.children(name):
            self.kill(f"{name}/{child}")
        for pid in self.pids(name) - {os.getpid()}:  # never the runner itself (v2: in <runner dir>/runner)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, name: str, *, wait: float = 0.0) -> bool:
        """Kill what is left in cgroup ``name`` and remove it (children first). False if still busy
        after ``wait`` seconds (a killed process not yet exited): call again later."""
        deadline = time.monotonic() + wait
        while True:
            self.kill(name)
            if self._rmdir_tree(name):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _rmdir_tree(self, name: str) -> bool:
        done = True
        for child in self.children(name):
            done = self._rmdir_tree(f"{name}/{child}") and done
        for d in self.dirs(name):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                done = False
        return done
