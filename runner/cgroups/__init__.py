"""Per-task cgroups (``rtx-runner serve --isolation cgroup``): the kernel holds each task to its reservation.

Layout
------
Under the runner's cgroup root R (``--cgroup-root``, else the runner's own cgroup from
``/proc/self/cgroup``; under systemd the unit's cgroup, delegated with ``Delegate=yes``)::

    R/rtx-runner-<pid>-<start time>/            one per runner process
        task-<allocation id>-<n>/               one per task start: memory and CPU limits
        runner/                                 cgroup v2 only, and only when R is the runner's own
                                                cgroup: the runner moves itself here, since a v2 cgroup
                                                that hands controllers to children holds no processes

With cgroup v1 the same relative paths exist in each controller's hierarchy (memory, cpu, cpuacct).
The runner's pid and kernel start time name its directory, so a later runner can tell a live
neighbour's directory (same root) from one whose runner is gone.

Life of a task cgroup
---------------------
1. ``create`` (runner, before the task is handed over): mkdir, then the limits. A failure removes
   what was made and raises ``CgroupError``: the start fails before any task code ran (retried).
2. join (the task process, ``runner.task_entry``): its first act writes its pid into each
   ``cgroup.procs``; Airflow's supervisor and everything it forks inherit the cgroup. A task that
   cannot join exits with that error and never runs unconfined.
3. ``stats`` (usage loop): memory current/peak, CPU time, OOM kills, read from the kernel.
4. ``release`` (reaper, after the task process exited): final stats (the OOM count and the peak
   survive the processes), SIGKILL of whatever the task left behind in its cgroup (a double-forked
   daemon is still in it), rmdir. A cgroup still busy (a process still dying) is retried on the next
   reap and at shutdown; whatever is left after a crash is swept at the next start.

One process per task: with ``--isolation cgroup`` a task process is never reused for another task
(``--tasks-per-process`` is taken as 1; ``runner.spares``). A reused process would have to move out of
the old task's cgroup into the next one, and the kernel does not move what it was charged with it:
under cgroup v1 the pages it touched stay charged to the old cgroup (``memory.move_charge_at_immigrate``
is deprecated and absent from v2), under v2 never move at all, so the next task's memory figures and
OOM limit would be wrong, and the old cgroup could not be removed while it still holds charges. And
``release`` kills whatever is left in a task's cgroup, which would be the spare itself. Each task
therefore runs in a process forked for it, which joins its cgroup first and exits with the task.

Failure cases: controller missing, not writable, v2 root with other processes (controllers cannot be
delegated): ``open_isolation`` raises ``CgroupError`` with one line that names what is missing and how
to fix it, and the runner refuses to start. Runner killed: its tasks die (``task_entry``'s watcher
kills every process in the task's cgroup, not only its tree) and
the next runner on the same root removes the directory of the dead one (``sweep_stale``), killing any
survivor first: tasks of a dead runner must not run on.

Both cgroup versions sit behind ``Backend`` (``runner.cgroups.backend``): v1 (``memory.limit_in_bytes``,
``cpu.shares``, ``cpu.cfs_quota_us``, ``cpuacct.usage``) and v2 (``memory.max``, ``cpu.weight``,
``cpu.max``, ``cpu.stat``).
"""

from __future__ import annotations

from runner.cgroups.backend import CgroupError
from runner.cgroups.isolation import Isolation, TaskCgroup, open_isolation
from runner.cgroups.join import JOIN_KEY, join
from runner.cgroups.limits import Stats, TaskLimits

__all__ = [
    "JOIN_KEY",
    "CgroupError",
    "Isolation",
    "Stats",
    "TaskCgroup",
    "TaskLimits",
    "join",
    "open_isolation",
]
