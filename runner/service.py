"""rtx-runner: registers, heartbeats, runs what the allocator assigned to it, reports outcomes.

``Runner`` only composes the parts; each protocol lives, with its states and failure cases, in
its own module:

* runner.lease     registration, heartbeats, being declared lost, the fencing deadlines
* runner.starts    claiming assigned rows, launching them, failed starts and orphans
* runner.reaper    task exits, stops with their kill grace, fencing's kills
* runner.outcomes  writing each task's end to the database, at least once
* runner.drain     maintenance drain/resume and the SIGTERM drain
* runner.usage     sampling what the tasks use (over a view of runner.tasks)

Threads (each a ``Loop``): heartbeat (which also waits for the NOTIFYs that wake work and itself),
work (outcomes, starts, revokes, orphans), reaper, usage, and drain once SIGTERM arrives.

Connections: two (docs/scaling.md#connection-budget).

* *heartbeat* (``<app>-heartbeat``): lease renewals, drain/resume seen by the heartbeat, and
  ``LISTEN``. The heartbeat loop is its only user: between renewals it waits on this connection for
  NOTIFYs (``Listener.wait_on``) until the next renewal is due, so a heartbeat never waits on work,
  and a NOTIFY is never held up by work either. A renewal that fails is retried after the loop's
  backoff (at most one interval); a connection that broke is reopened by the next use, LISTENs
  again and wakes every loop (what was sent meanwhile is gone).
* *work* (``<app>``): starts, outcomes, revokes, orphans, usage samples, registration, drain and
  deregistration, shared by their threads one statement block at a time (``Database``'s lock). None
  of them is latency-critical to another; a long block only delays the others on this connection.
"""

from __future__ import annotations

import time

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
from runtime_executor.db.channels import runner_channel
from runtime_executor.db.connection import Database
from runtime_executor.loop import Listener, Loop
from runtime_executor.settings import Settings, validate_fencing

__all__ = ["Capacity", "Outcome", "Runner", "TaskHandle", "describe_exit"]

log = structlog.get_logger("rtx.runner")

DECLARED_LOST = "runner was declared lost (lease expired); fencing its tasks"
IDLE_POLL_LEASES = 5  # an idle runner's work poll, in lease periods (its renewals poll meanwhile)


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

        # -- database connections: two (see the module's note). The heartbeat keeps its own, and
        # LISTENs on it between renewals; everything else shares the work connection.
        self._work_db = Database(settings, app)  # starts, outcomes, revokes, orphans, usage, start-up, drain
        # lease renewal, drain/resume, LISTEN; a few key lookups, prepared and planned once (Database)
        self._heartbeat_db = Database(settings, app + "-heartbeat", plan_once=True)

        self.metrics = RunnerMetrics(self.name)
        self.metrics.set_capacity(capacity.slots, capacity.cpu, capacity.memory_mb)
        self.tasks = RunningTasks()
        self.metrics.track_reserved(self.tasks.reserved)
        self.outcomes = OutcomeQueue(settings, self._work_db, self.metrics)
        # One process per task under --isolation cgroup: a reused process would carry its memory
        # charges (and the task's cgroup) into the next task (runner.spares, runner.cgroups).
        self.spares = SparePool(
            spare_processes,
            slots=capacity.slots,
            tasks_per_process=1 if isolation is not None else settings.tasks_per_process,
        )
        self.isolation = isolation  # opened by the CLI before the fork server starts (runner.cgroups)
        self.reaper = Reaper(
            settings,
            self.lease,
            self.tasks,
            self.outcomes,
            on_exit=self._on_task_exit,
            spares=self.spares,
            isolation=isolation,
            metrics=self.metrics,
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
            settings, self._work_db, self.tasks, self.reaper.stop, self.metrics, isolation=isolation
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
            on_started=self._on_started,
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
        # no thread or connection of its own: the heartbeat loop waits on it (heartbeat_tick)
        self.listener = Listener(settings, app + "-heartbeat")
        self._channel = runner_channel(settings.schema, self.runner_id)  # this runner's own (db.channels)
        self.listener.subscribe(self._channel, [self._on_notify])
        self._heartbeat_due = 0.0  # monotonic time of the next renewal; 0: at once
        self._last_renewal = 0.0

    @property
    def runner_id(self) -> str:
        return self.lease.runner_id

    @property
    def loops(self) -> list[Loop]:
        """The loops that must stay alive while the runner serves (the systemd watchdog's check)."""
        return [self.work, self.heartbeat, self.reaper.loop, self.usage.loop]

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.spares.start()  # warm processes before the first task arrives
        self.lease.register(self._work_db)
        self.heartbeat.start()
        self.reaper.start()
        self.work.start()
        self.usage.start()

    def drain_and_stop(self, timeout: float | None = None) -> None:
        """SIGTERM: take nothing new, give back what has not started, wait for running tasks up to
        ``drain_timeout``, then stop them, report every outcome and deregister (runner.drain)."""
        self.drain.run(self._work_db, timeout)
        self.work.stop()
        self.heartbeat.stop()
        self.reaper.stop_loop()
        self.usage.stop()
        self.spares.close()
        if self.isolation is not None:
            self.isolation.close()
        self.drain.deregister(self._work_db)
        for db in (self._work_db, self._heartbeat_db):
            db.close()
        self.metrics.close()
        if len(self.outcomes):
            log.error("runner stopped with unreported outcomes", count=len(self.outcomes))
        log.info("runner stopped", runner_id=self.runner_id)

    # -- wake-ups -------------------------------------------------------------------------------
    def _on_notify(self, _payload: str) -> None:
        """Called in the heartbeat loop (Listener.wait_on) for each NOTIFY on this runner's channel
        (work, a cancel, a state change), and when the listener starts listening there."""
        self.work.wake()
        # a state change (drain/resume) is seen by the next renewal: bring it forward (at most one
        # extra renewal per 0.2 s, however many assignments arrive)
        self._heartbeat_due = min(self._heartbeat_due, self._last_renewal + 0.2)

    def _listen_as_me(self) -> None:
        """After registering again under a fresh id: listen on that id's channel instead."""
        self.listener.unsubscribe(self._channel)
        self._channel = runner_channel(self.settings.schema, self.runner_id)
        self.listener.subscribe(self._channel, [self._on_notify])  # the next wait LISTENs, then wakes work

    def _on_started(self) -> None:
        self.reaper.wake()
        # renewals at the busy pace from now on (an idle runner renews less often: _renew)
        self._heartbeat_due = min(self._heartbeat_due, self._last_renewal + self.settings.heartbeat_interval)

    def _wake_work(self) -> None:
        self.work.wake()

    def _on_task_exit(self) -> None:
        self.work.wake()  # write its outcome
        self.drain.wake()  # a drain may be waiting for the last task

    # -- heartbeat (runner.lease) ----------------------------------------------------------------
    def heartbeat_tick(self) -> bool:
        """Renew the lease when due, then wait for NOTIFYs on the same connection until the next
        renewal is due. Returns True: the wait is the loop's pause."""
        if time.monotonic() >= self._heartbeat_due:
            self._renew()
        # in slices of at most 0.5 s, so that a stop is seen soon (waiting costs the server nothing)
        self.listener.wait_on(self._heartbeat_db, min(0.5, self._heartbeat_due - time.monotonic()))
        return not self.heartbeat.stopping

    def _renew(self) -> None:
        # not due again until this renewal succeeded: one that raises is retried after the backoff
        could_start = self.lease.may_start()
        usage = {
            "host_cpu_percent": psutil.cpu_percent(interval=None),
            "host_memory_used_mb": (psutil.virtual_memory().total - psutil.virtual_memory().available)
            // 2**20,
        }
        renewal = self.lease.renew(self._heartbeat_db, **usage)
        if renewal is None:  # declared lost: the allocator rescued our work. Fence, then start afresh.
            self.reaper.stop_all(DECLARED_LOST)
            self.lease.register_again(self._heartbeat_db)
            self._listen_as_me()
            self.work.wake()
        else:
            self.drain.on_row_state(renewal.state, self._heartbeat_db)
            # the renewal is the idle runner's poll: it says whether a NOTIFY went missing
            if renewal.has_work:
                self.work.wake()
            if renewal.stale_running and not len(self.tasks):
                self.starts.check_orphans_soon()  # rows running here with no process of ours
                self.work.wake()
        if not could_start:
            self.work.wake()  # starts held back while the lease ran short may go now (no NOTIFY says so)
        self._last_renewal = time.monotonic()
        self._heartbeat_due = self._last_renewal + self._renewal_interval()

    def _renewal_interval(self) -> float:
        """``heartbeat_interval`` while tasks run (fencing's deadlines follow each renewal). An idle
        runner has nothing to fence: it renews every ``lease_timeout / 2`` (at least
        ``heartbeat_interval``), so one renewal may fail and the lease still holds, at a fraction of
        the server's cost (docs/scaling.md). Its lease is never too short to start: every NOTIFY
        brings the next renewal forward (``_on_notify``), and a start needs only more than one
        ``heartbeat_interval`` and the fencing lead left (``Lease.may_start``)."""
        if len(self.tasks):
            return self.settings.heartbeat_interval
        return max(self.settings.heartbeat_interval, self.settings.lease_timeout / 2)

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
        # The poll only covers a NOTIFY lost with a broken connection. While idle, the lease renewal
        # asks the same questions (heartbeat_runner.sql: work to start or cancel, orphans) and the
        # heartbeat's reconnect wakes this loop, so an idle runner sends nothing but its renewals;
        # the rare poll left is a last resort.
        idle = not len(self.tasks) and not len(self.outcomes)
        self.work.interval = (
            max(self.settings.runner_poll_interval, IDLE_POLL_LEASES * self.settings.lease_timeout)
            if idle
            else self.settings.runner_poll_interval
        )
        return False
