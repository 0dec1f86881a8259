"""Task starts: claim what is assigned to this runner, launch it, and put back a start that failed.

    assigned --start_assigned--> running --launch--> task process runs (a TaskHandle, runner.tasks)
                                    |
                                    +--launch failed / no process--> start failed (runner.outcomes:
                                       retry_start, running -> unassigned, or failed past start_retries)

* Claim: ``start_assigned`` moves every row assigned to this runner to ``running`` in one
  statement, guarded by ``runner_id = me``, ``state = 'assigned'`` and this runner's row live with
  its lease unexpired (database clock). The work loop claims only while ``Runner.can_start`` holds
  (not draining, and the lease far enough from fencing, runner.lease).
* Launch: each claimed row is handed to a warm spare process (runner.spares), which may have run
  other tasks before; the pids are then written in one statement. The work loop writes queued outcomes between launches, since an outcome
  frees a slot in Airflow and a burst of launches must not hold it back.
* With ``--isolation cgroup`` the task's cgroup is made before the launch (runner.cgroups); a
  cgroup that cannot be made is a failed start, and one made for a launch that failed is released.
* A start fails before any of the task's code ran when the launch raises before the workload was
  handed over, or when fencing began while the claim was on its way (``Lease.fencing_begun``). Its
  outcome is ``start_failed``: the row is placed again, the same Airflow try, without using one of
  the user's retries.
* Orphans: once per lease period while it polls (and at once when an idle runner's renewal says a
  row runs here for longer than a lease: ``check_orphans_soon``) the runner asks which rows the
  database says it runs for longer than a lease. One with no process here and no queued outcome is a start whose reply was lost (the
  connection broke after the commit); it becomes a failed start too. Without this it would stay
  running forever, since this runner keeps renewing its lease.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from runner import task_entry
from runner.cgroups.isolation import task_env
from runner.lease import Lease
from runner.outcomes import Outcome, OutcomeQueue
from runner.spares import SparePool
from runner.tasks import RunningTasks, TaskHandle
from runner.usage import log_path_of
from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings

if TYPE_CHECKING:
    from runner.cgroups import Isolation
    from runner.metrics import RunnerMetrics

log = structlog.get_logger("rtx.runner")


class TaskStarts:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        lease: Lease,
        tasks: RunningTasks,
        outcomes: OutcomeQueue,
        spares: SparePool,
        metrics: RunnerMetrics,
        *,
        server_url: str | None,
        oom_kills: Callable[[], int | None],
        on_started: Callable[[], None],
        on_failed: Callable[[], None],
        isolation: Isolation | None = None,
    ) -> None:
        self.settings = settings
        self._isolation = isolation
        self._db = db  # the work loop's connection: every call here runs in the work loop
        self._lease = lease
        self._tasks = tasks
        self._outcomes = outcomes
        self._spares = spares
        self._metrics = metrics
        self._server_url = server_url
        self._oom_kills = oom_kills  # the cgroup's OOM-kill count now (cached by the usage loop)
        self._on_started = on_started  # a new process to watch (wakes the reaper)
        self._on_failed = on_failed  # a failed start's outcome is queued (wakes the work loop)
        self._task_entry = task_entry.entry_point()
        self._last_orphan_check = time.monotonic()
        # Test only (documented in docs/reliability.md): the first N launches raise OSError, a real
        # start failure before any task code runs. Never set in production.
        self._test_fail_launches = int(os.environ.get("RTX_TEST_FAIL_LAUNCHES") or 0)

    def start_assigned(self) -> None:
        """Claim and launch everything assigned to this runner (the caller checked ``can_start``)."""
        with self._db.statements() as gw:
            rows = gw.start_assigned(self._lease.runner_id)
        started_rows = time.monotonic()
        pids = {}
        for row in rows:
            if len(self._outcomes):
                self._outcomes.flush()
            pid = self._spawn(row)
            if pid is not None:
                pids[str(row["id"])] = pid
                # insert -> task process started: age at the start query (database clock) + our time since
                self._metrics.pickup_latency.labels(row["queue"]).observe(
                    max(0.0, row["age_s"] + time.monotonic() - started_rows)
                )
        if pids:
            with self._db.statements() as gw:
                gw.set_allocation_pids(self._lease.runner_id, pids)

    def check_orphans_soon(self) -> None:
        """Make the next work tick check for orphans (a renewal saw a row running here for longer
        than a lease while the runner has no task)."""
        self._last_orphan_check = float("-inf")

    def check_orphans_when_due(self) -> None:
        if time.monotonic() - self._last_orphan_check > self.settings.lease_timeout:
            self._fail_orphans()

    def _fail_orphans(self) -> None:
        self._last_orphan_check = time.monotonic()
        runner_id = self._lease.runner_id
        with self._db.statements() as gw:
            rows = gw.running_on_runner(runner_id, self.settings.lease_timeout)
        known = self._tasks.ids() | self._outcomes.allocation_ids()
        for allocation_id in rows:
            if allocation_id not in known:
                log.error(
                    "allocation running here without a process; failing it", allocation_id=allocation_id
                )
                self._outcomes.append(
                    Outcome(
                        allocation_id, runner_id, "failed", None, "the runner had no process for it", True
                    )
                )
        self._outcomes.flush()

    def _spawn(self, row: dict) -> int | None:
        allocation_id = str(row["id"])
        runner_id = self._lease.runner_id
        label = (
            f"{row['dag_id']}.{row['task_id']} run={row['run_id']} try={row['try_number']}"
            if row["kind"] == "task"
            else f"callback {row['callback_id']}"
        )
        env = {"RTX_ALLOCATION_ID": allocation_id, "RTX_RUNNER_ID": runner_id}
        cgroup = None
        try:
            self._before_launch()
            if self._isolation is not None:
                cgroup = self._isolation.create(allocation_id, row["memory_mb"], row["cpu"])
                env.update(task_env(cgroup))
            spare = self._spares.launch(
                self._task_entry, row["workload"], env, self._server_url, f"rtx task: {label}"
            )
        except Exception as exc:  # noqa: BLE001 - a task that cannot start fails alone
            if cgroup is not None:
                self._isolation.release(cgroup)
            # launch returns once the workload is handed over: an error before that ran no task code
            log.exception("could not start task process", allocation_id=allocation_id)
            self._outcomes.append(
                Outcome(
                    allocation_id, runner_id, "failed", None, f"could not start task process: {exc}", True
                )
            )
            self._on_failed()
            return None
        pid = spare.pid  # before the handle is shared: a fast task may be reaped (closed) at once
        self._tasks.add(
            TaskHandle(
                allocation_id,
                runner_id,
                label,
                spare,
                pid=pid,
                slots=row["slots"],
                cpu=row["cpu"],
                memory_mb=row["memory_mb"],
                log_path=log_path_of(row["workload"]),
                oom_kills_at_start=self._oom_kills(),
                cgroup=cgroup,
            )
        )
        self._on_started()
        log.info("task started", allocation_id=allocation_id, runner_id=runner_id, task=label, pid=pid)
        return pid

    def _before_launch(self) -> None:
        """Refuse a launch that cannot be fenced in time or that a test asked to fail (OSError)."""
        if self._lease.fencing_begun():
            raise OSError("the runner's lease ran out before the task could start (it cannot renew it)")
        if self._test_fail_launches > 0:
            self._test_fail_launches -= 1
            raise OSError("launch refused by RTX_TEST_FAIL_LAUNCHES (test only)")
