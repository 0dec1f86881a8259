"""The task process's side: join the cgroup the runner made for it, before anything else runs.

Kept to the standard library: it runs in every forked task process, first thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

# The key, in the environment dict the runner hands a task process, that holds the cgroup.procs
# files to join (a JSON list). Taken out before the environment reaches the task.
JOIN_KEY = "RTX_CGROUP_PROCS"


def join(files_json: str) -> None:
    """Move this process into its cgroup (each v1 hierarchy, or the one v2 cgroup). Raises OSError:
    a task that cannot join must not run unconfined."""
    pid = str(os.getpid())
    for path in json.loads(files_json):
        with open(path, "w", encoding="ascii") as f:
            f.write(pid)


def kill_members(files_json: str) -> None:
    """SIGKILL every other process in this task's cgroup: also those that left its process tree (a
    double-forked daemon), which a walk of the tree misses. Twice, for a fork racing the first pass."""
    me = os.getpid()
    for _ in range(2):
        for path in json.loads(files_json):
            try:
                with open(path, encoding="ascii") as f:
                    pids = [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                continue
            for pid in pids:
                if pid != me:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
