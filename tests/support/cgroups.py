"""Real cgroups for tests: throwaway roots per session, and the check that nothing is left in them.

A root is a cgroup path (``/rtx-test-...-<pid>``) made in every hierarchy the runner would use
(here: cgroup v1 memory, cpu, cpuacct). Runners under test get it as ``--cgroup-root``, so they never
touch the cgroup the test session itself runs in. At the end of the session each root must be empty:
a runner that left a task's cgroup (or its own) behind fails the suite there.

Where a host cannot give a kind of cgroup, its tests skip and say why (never pass silently).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cgroups import CgroupError
from runner.cgroups.backend import Backend, directory, mounts, own_cgroups
from runner.cgroups.v1 import V1
from runner.cgroups.v2 import V2


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} did not run: creating cgroups needs root")


def v2_hierarchy() -> tuple[Path | None, str]:
    """The root directory of a cgroup v2 hierarchy that offers memory and cpu, or why there is none."""
    found = [m for m in mounts() if m.fstype == "cgroup2"]
    if not found:
        return None, "no cgroup v2 hierarchy is mounted"
    missing = V2(found[0].point).missing()
    if missing:
        return None, (
            f"the cgroup v2 hierarchy at {found[0].point} lacks the {' and '.join(missing)} controller(s) "
            "(on this host they are bound to cgroup v1)"
        )
    return found[0].point, ""


def _session(backend: Backend) -> Iterator[Backend]:
    try:
        yield backend
    finally:
        left = backend.children()
        for name in left:  # clean up first, so one failure does not leak into the next session
            backend.remove(name, wait=5.0)
        for d in backend.dirs():
            d.rmdir()
        assert not left, f"cgroups left behind under {[str(d) for d in backend.dirs()]}: {left}"


def _v1(root: str) -> Iterator[Backend]:
    _need_root("cgroup v1 tests")
    try:
        backend = V1.find(mounts(), own_cgroups(), root)
    except CgroupError as exc:
        pytest.skip(f"cgroup v1 tests did not run: {exc}")
    for d in backend.dirs():
        d.mkdir()
    yield from _session(backend)


def _v2(root: str) -> Iterator[Backend]:
    hierarchy, why = v2_hierarchy()
    if hierarchy is None:
        pytest.skip(f"cgroup v2 tests did not run: {why}; they run where cgroup v2 offers memory and cpu")
    _need_root("cgroup v2 tests")
    (hierarchy / "cgroup.subtree_control").write_text("+memory +cpu")  # a hierarchy's root may hold processes
    path = directory(next(m for m in mounts() if m.fstype == "cgroup2"), root)
    path.mkdir()
    yield from _session(V2(path))


@pytest.fixture(scope="session")
def cgroup_v1() -> Iterator[Backend]:
    """A v1 backend on a throwaway root (memory, cpu, cpuacct)."""
    yield from _v1(f"/rtx-test-v1-{os.getpid()}")


@pytest.fixture(scope="session")
def cgroup_v2() -> Iterator[Backend]:
    """A v2 backend on a throwaway root with memory and cpu."""
    yield from _v2(f"/rtx-test-v2-{os.getpid()}")


@pytest.fixture(scope="session")
def cgroup_root() -> Iterator[str]:
    """A throwaway root for runners (``--cgroup-root``) of the version a runner picks on this host."""
    root = f"/rtx-test-runners-{os.getpid()}"
    for _ in _v2(root) if v2_hierarchy()[0] is not None else _v1(root):
        yield root
