"""cgroup v2: one unified hierarchy; controllers are handed down through ``cgroup.subtree_control``."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from runner.cgroups.backend import (
    FIX,
    Backend,
    CgroupError,
    Mount,
    directory,
    keyed,
    procs,
    read,
    read_int,
    write,
)
from runner.cgroups.limits import CPU_PERIOD_US, Stats, TaskLimits

REQUIRED = ("memory", "cpu")
RUNNER_LEAF = "runner"


class V2(Backend):
    version = "v2"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.moved_self = False  # the runner moved itself into <runner dir>/runner (see prepare)
        self._own_dir: str | None = None  # that runner dir, whose cgroup.kill would kill the runner

    @classmethod
    def find(cls, mounts: list[Mount], own: dict[str, str], root: str | None) -> V2 | None:
        """The v2 backend if a v2 hierarchy is mounted and the root has memory and cpu, else None."""
        mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
        if mount is None:
            return None
        backend = cls(directory(mount, root if root is not None else own.get("", "/")))
        return backend if not backend.missing() else None

    def missing(self) -> list[str]:
        try:
            available = set(read(self.root / "cgroup.controllers").split())
        except OSError:
            return list(REQUIRED)
        return [c for c in REQUIRED if c not in available]

    def dirs(self, name: str = "") -> list[Path]:
        return [self.root / name if name else self.root]

    def check(self) -> None:
        if not self.root.is_dir():
            raise CgroupError(
                f"--isolation cgroup: the runner's cgroup root {self.root} does not exist; "
                "create it or give --cgroup-root an existing cgroup path"
            )
        missing = self.missing()
        if missing:
            raise CgroupError(
                f"--isolation cgroup: cgroup v2 {self.root} lacks the {' and '.join(missing)} controller"
                f"{'s' if len(missing) > 1 else ''}; delegate {'them' if len(missing) > 1 else 'it'} to the runner "
                "(systemd: Delegate=yes) or enable it in the parent's cgroup.subtree_control"
            )

    def prepare(self, runner_dir: str) -> None:
        """v2's rule: a cgroup that hands controllers to its children holds no processes itself
        (except the hierarchy's root). If the root is the runner's own cgroup (systemd's unit), the
        runner first moves itself into <runner dir>/runner; its fork server and spares follow it."""
        self.mkdir(runner_dir, exist_ok=True)
        if os.getpid() in procs(self.root):
            self.mkdir(f"{runner_dir}/{RUNNER_LEAF}", exist_ok=True)
            self._write(self.root / runner_dir / RUNNER_LEAF / "cgroup.procs", str(os.getpid()))
            self.moved_self = True
            self._own_dir = runner_dir
        enable = " ".join(f"+{c}" for c in REQUIRED)
        for d in (self.root, self.root / runner_dir):
            try:
                write(d / "cgroup.subtree_control", enable)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    others = sorted(procs(d))[:5]
                    raise CgroupError(
                        f"--isolation cgroup: cgroup {d} holds other processes ({', '.join(map(str, others))}), so it "
                        "cannot hand memory and cpu to task cgroups; give the runner a cgroup of its own "
                        "(systemd: Delegate=yes) or --cgroup-root naming an empty delegated cgroup"
                    ) from None
                raise CgroupError(
                    f"--isolation cgroup: cannot write {d}/cgroup.subtree_control: {exc.strerror}; {FIX}"
                ) from None

    @staticmethod
    def _write(path: Path, value: str) -> None:
        try:
            write(path, value)
        except OSError as exc:
            raise CgroupError(f"--isolation cgroup: cannot write {path}: {exc.strerror}; {FIX}") from None

    def configure(self, name: str, limits: TaskLimits) -> None:
        d = self.root / name
        if limits.memory_limit_bytes is not None:
            write(d / "memory.max", str(limits.memory_limit_bytes))
            if (d / "memory.swap.max").exists():
                write(d / "memory.swap.max", "0")
        write(d / "cpu.weight", str(limits.cpu_weight()))
        if limits.cpu_quota_us is not None:
            write(d / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")

    def kill(self, name: str) -> None:
        kill_file = self.root / name / "cgroup.kill"  # 5.14+: the whole subtree at once, no race with forks
        holds_runner = self._own_dir is not None and (
            name == self._own_dir or name.startswith(f"{self._own_dir}/{RUNNER_LEAF}")
        )
        if name and kill_file.exists() and not holds_runner:
            try:
                write(kill_file, "1")
                return
            except OSError:
                pass
        super().kill(name)

    def stats(self, name: str) -> Stats | None:
        d = self.root / name
        current = read_int(d / "memory.current")
        if current is None:
            return None
        cpu = keyed(d / "cpu.stat")
        usage_usec = cpu.get("usage_usec")
        return Stats(
            memory_bytes=current,
            working_set_bytes=max(0, current - keyed(d / "memory.stat").get("inactive_file", 0)),
            peak_bytes=read_int(d / "memory.peak"),  # 5.19+
            limit_bytes=read_int(d / "memory.max"),
            cpu_seconds=usage_usec / 1e6 if usage_usec is not None else None,
            oom_kills=keyed(d / "memory.events").get("oom_kill"),
            limit_hits=keyed(d / "memory.events").get("max"),
            throttled=cpu.get("nr_throttled"),
        )
