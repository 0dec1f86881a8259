"""cgroup v1: one hierarchy per controller (memory, cpu, and cpuacct where mounted, maybe with cpu)."""

from __future__ import annotations

from pathlib import Path

from runner.cgroups.backend import FIX, Backend, CgroupError, Mount, directory, keyed, read_int, write
from runner.cgroups.limits import CPU_PERIOD_US, Stats, TaskLimits

REQUIRED = ("memory", "cpu")
UNLIMITED = 2**62  # v1 reports "no limit" as a huge page-aligned number


class V1(Backend):
    version = "v1"

    def __init__(self, roots: dict[str, Path]) -> None:
        """``roots``: {controller: directory of the runner's root cgroup in that controller's hierarchy}."""
        self.roots = roots

    @classmethod
    def find(cls, mounts: list[Mount], own: dict[str, str], root: str | None) -> V1:
        roots: dict[str, Path] = {}
        for controller in (*REQUIRED, "cpuacct"):
            mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.controllers), None)
            if mount is None:
                if controller in REQUIRED:
                    raise CgroupError(
                        f"--isolation cgroup: the cgroup v1 '{controller}' controller is not mounted "
                        f"(mount it at /sys/fs/cgroup/{controller}, or use a host with cgroup v2 and "
                        f"'{controller}' delegated to the runner: Delegate=yes)"
                    )
                continue
            roots[controller] = directory(mount, root if root is not None else own.get(controller, "/"))
        return cls(roots)

    def dirs(self, name: str = "") -> list[Path]:
        out: list[Path] = []
        for root in self.roots.values():
            d = root / name if name else root
            if d not in out:
                out.append(d)
        return out

    def _dir(self, controller: str, name: str) -> Path | None:
        root = self.roots.get(controller)
        return None if root is None else (root / name if name else root)

    def check(self) -> None:
        for controller, root in self.roots.items():
            if not root.is_dir():
                raise CgroupError(
                    f"--isolation cgroup: the runner's cgroup root {root} ({controller}) does not exist; "
                    "create it or give --cgroup-root an existing cgroup path"
                )
        memory = self.roots["memory"]
        if not (memory / "memory.limit_in_bytes").exists():
            raise CgroupError(f"--isolation cgroup: {memory} has no memory.limit_in_bytes; {FIX}")

    def configure(self, name: str, limits: TaskLimits) -> None:
        memory, cpu = self._dir("memory", name), self._dir("cpu", name)
        assert memory is not None and cpu is not None
        if limits.memory_limit_bytes is not None:
            write(memory / "memory.limit_in_bytes", str(limits.memory_limit_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
                write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_limit_bytes))
            if (memory / "memory.swappiness").exists():
                write(memory / "memory.swappiness", "0")
        write(cpu / "cpu.shares", str(limits.cpu_shares()))
        if limits.cpu_quota_us is not None:
            write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            write(cpu / "cpu.cfs_quota_us", str(limits.cpu_quota_us))

    def stats(self, name: str) -> Stats | None:
        memory = self._dir("memory", name)
        assert memory is not None
        usage = read_int(memory / "memory.usage_in_bytes")
        if usage is None:
            return None
        limit = read_int(memory / "memory.limit_in_bytes")
        inactive = keyed(memory / "memory.stat").get("total_inactive_file", 0)
        cpuacct, cpu = self._dir("cpuacct", name), self._dir("cpu", name)
        cpu_ns = read_int(cpuacct / "cpuacct.usage") if cpuacct is not None else None
        return Stats(
            memory_bytes=usage,
            working_set_bytes=max(0, usage - inactive),
            peak_bytes=read_int(memory / "memory.max_usage_in_bytes"),
            limit_bytes=limit if limit is not None and limit < UNLIMITED else None,
            cpu_seconds=cpu_ns / 1e9 if cpu_ns is not None else None,
            oom_kills=keyed(memory / "memory.oom_control").get("oom_kill"),
            limit_hits=read_int(memory / "memory.failcnt"),
            throttled=keyed(cpu / "cpu.stat").get("nr_throttled") if cpu is not None else None,
        )
