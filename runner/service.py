"""rtx-runner: registers, heartbeats, runs what the allocator assigned to it, reports outcomes.

``Runner`` only composes the parts; each protocol lives, with its states and failure cases, in
its own module:

* runner.lease     registration, heartbeats, being declared lost, the fencing deadlines
* runner.starts    claiming assigned rows, launching them, failed starts and orphans
* runner.reaper    task exits, stops with their kill grace, fencing's kills
* runner.outcomes  writing each task's end to the database, at least once
* runner.drain     maintenance drain/resume and the SIGTERM drain
* runner.usage     sampling what the tasks use (over a view of runner.tasks)

Threads (each a ``Loop``): heartbeat, work (outcomes, starts, revokes, orphans), reaper, usage,
listener (NOTIFY wakes work and heartbeat), and drain once SIGTERM arrives.
"""

from __future__ import annotations

import psutil
import structlog

from runner.cgroups import Isolation
from runner.drain import Drain
from runner.lease import Capacity, Lease
from runner.metrics import RunnerMetrics
from runner.outcomes import Outcome, OutcomeQueue
from runner.reaper import Reaper, describe_exit
from runner.spares import SparePool
from runner.starts import TaskStarts
from runner.tasks import RunningTasks, TaskHandle
from runner.usage import UsageMonitor
from runtime_executor.db.connection import Database
from runtime_executor.loop import Listener, Loop
from runtime_executor.settings import Settings, validate_fencing

__all__ = ["Capacity", "Outcome", "Runner", "TaskHandle", "describe_exit"]

log = structlog.get_logger("rtx.runner")

DECLARED_LOST = "runner was declared lost (lease expired); fencing its tasks"


class Runner:
    def __init__(
        self,
        settings: Settings,
        capacity: Capacity,
        queues: list[str],
        *,
        name: str | None = None,
        server_url: str | None = None,
        spare_processes: int = 2,
        isolation: Isolation | None = None,
    ) -> None:
        validate_fencing(settings)
        self.settings = settings
        self.lease = Lease(settings, capacity, queues, name)
        self.name = self.lease.name
        app = f"rtx-runner:{self.name}"

        # -- database connections: one per thread that writes, so a heartbeat never waits on work.
        # (The listener holds one more, for LISTEN.)
        self._work_db = Database(settings, app)  # work loop: starts, outcomes, revokes, orphans
        self._heartbeat_db = Database(settings, app + "-heartbeat")  # lease renewal, drain/resume
        self._control_db = Database(settings, app + "-control")  # start-up and SIGTERM drain, main thread
        self._usage_db = Database(settings, app + "-usage")  # usage samples (opened on the first write)

        self.metrics = RunnerMetrics(self.name)
        self.metrics.set_capacity(capacity.slots, capacity.cpu, capacity.memory_mb)
        self.tasks = RunningTasks()
        self.metrics.track_reserved(self.tasks.reserved)
        self.outcomes = OutcomeQueue(settings, self._work_db, self.metrics)
        self.spares = SparePool(spare_processes)
        self.isolation = isolation  # opened by the CLI before the fork server starts (runner.cgroups)
        self.reaper = Reaper(
            settings, self.lease, self.tasks, self.outcomes, on_exit=self._on_task_exit, isolation=isolation
        )
        self.drain = Drain(
            settings,
            self.lease,
            self.tasks,
            self.outcomes,
            stop_all=self.reaper.stop_all,
            wake_work=self._wake_work,
        )
        self.usage = UsageMonitor(
            settings, self._usage_db, self.tasks, self.reaper.stop, self.metrics, isolation=isolation
        )
        self.starts = TaskStarts(
            settings,
            self._work_db,
            self.lease,
            self.tasks,
            self.outcomes,
            self.spares,
            self.metrics,
            server_url=server_url,
            oom_kills=lambda: self.usage.oom_kills,
            on_started=self.reaper.wake,
            on_failed=self._wake_work,
            isolation=isolation,
        )
        self.work = Loop("work", self.work_tick, settings.runner_poll_interval)
        self.heartbeat = Loop(
            "heartbeat",
            self.heartbeat_tick,
            settings.heartbeat_interval,
            max_backoff=settings.heartbeat_interval,
        )
        self.listener = Listener(settings, app + "-listen")
        self.listener.subscribe("runner", [self._on_notify])

    @property
    def runner_id(self) -> str:
        return self.lease.runner_id

    @property
    def loops(self) -> list[Loop]:
        """The loops that must stay alive while the runner serves (the systemd watchdog's check)."""
        return [self.work, self.heartbeat, self.reaper.loop, self.usage.loop, self.listener.loop]

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.spares.start()  # warm processes before the first task arrives
        self.lease.register(self._control_db)
        self.listener.start()
        self.heartbeat.start()
        self.reaper.start()
        self.work.start()
        self.usage.start()

    def drain_and_stop(self, timeout: float | None = None) -> None:
        """SIGTERM: take nothing new, give back what has not started, wait for running tasks up to
        ``drain_timeout``, then stop them, report every outcome and deregister (runner.drain)."""
        self.drain.run(self._control_db, timeout)
        self.listener.stop()
        self.work.stop()
        self.heartbeat.stop()
        self.reaper.stop_loop()
        self.usage.stop()
        self.spares.close()
        if self.isolation is not None:
            self.isolation.close()
        self.drain.deregister(self._control_db)
        for db in (self._work_db, self._heartbeat_db, self._control_db, self._usage_db):
            db.close()
        self.metrics.close()
        if len(self.outcomes):
            log.error("runner stopped with unreported outcomes", count=len(self.outcomes))
        log.info("runner stopped", runner_id=self.runner_id)

    # -- wake-ups -------------------------------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        if not payload or payload == self.runner_id:
            self.work.wake()
            self.heartbeat.wake()  # a state change (drain/resume) is seen by the heartbeat

    def _wake_work(self) -> None:
        self.work.wake()

    def _on_task_exit(self) -> None:
        self.work.wake()  # write its outcome
        self.drain.wake()  # a drain may be waiting for the last task

    # -- heartbeat (runner.lease) ----------------------------------------------------------------
    def heartbeat_tick(self) -> bool:
        usage = {
            "host_cpu_percent": psutil.cpu_percent(interval=None),
            "host_memory_used_mb": (psutil.virtual_memory().total - psutil.virtual_memory().available)
            // 2**20,
        }
        state = self.lease.renew(self._heartbeat_db, **usage)
        if state is None:  # declared lost: the allocator rescued our work. Fence, then start afresh.
            self.reaper.stop_all(DECLARED_LOST)
            self.lease.register_again(self._heartbeat_db)
            self.work.wake()
        else:
            self.drain.on_row_state(state, self._heartbeat_db)
        return False

    # -- work (runner.outcomes, runner.starts) ---------------------------------------------------
    def can_start(self) -> bool:
        return not self.drain.draining and self.lease.may_start()

    def work_tick(self) -> bool:
        # Outcomes first, and again between starts: an outcome frees a slot in Airflow (the
        # scheduler queues the next task only once it is reported), so a burst of starts (each
        # may fork a process) must not hold it back.
        self.outcomes.flush()
        if self.can_start():
            self.starts.start_assigned()
        self.outcomes.flush()
        with self._work_db.statements() as gw:
            cancelled = gw.cancel_requested_on_runner(self.runner_id)
        for allocation_id in cancelled:
            self.reaper.stop(allocation_id, "revoked by the scheduler")
        self.starts.check_orphans_when_due()
        return False
