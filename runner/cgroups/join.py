"""The task process's side: join the cgroup the runner made for it, before anything else runs.

Kept to the standard library: it runs in every forked task process, first thing.
"""

from __future__ import annotations

import json
import os

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
