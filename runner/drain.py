"""Drain: take nothing new, give back what has not started, let running tasks finish.

States of the runner row: ``active <-> draining`` (maintenance: ``rtx runner drain|resume NAME``
sets the row, the heartbeat sees it), and ``active | draining -> stopped`` after a SIGTERM drain.
Each change is one transaction guarded by the from-states (``set_runner_state``; never revives a
lost row) that also gives back every row still ``assigned`` here (``assigned -> unassigned``,
``release_assigned``), so nothing waits for a runner that will not start it.

A SIGTERM drain (``run``) cannot be undone by a resume (``stopping``). Its phases, one ``Loop`` tick
each time it is woken (a task exited) or every POLL seconds:

    waiting   running tasks finish, up to drain_timeout
    stopping  past drain_timeout, every task left is stopped (SIGTERM, then SIGKILL after
              kill_grace) and given kill_grace + 5 s to exit
    flushing  the work loop writes the queued outcomes, up to max(lease_timeout, 5 s)
    done      the runner stops its loops and marks its row stopped (``deregister``)

Failure cases: the database away during a drain: the state changes are logged and skipped (the lease
then expires, and the allocator's upkeep does the same job: gives back, or marks lost, what is left);
outcomes not written by the end of ``flushing`` are logged and left to that upkeep too. A task that
will not die past ``stopping`` is left to the task's own watch of the runner's pipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from runner.lease import Lease
from runner.outcomes import OutcomeQueue
from runner.tasks import RunningTasks
from runtime_executor.db.connection import Database
from runtime_executor.loop import Loop
from runtime_executor.settings import Settings

log = structlog.get_logger("rtx.runner")

POLL = 0.1  # seconds between looks at the phase's condition when nothing wakes the drain


class Drain:
    def __init__(
        self,
        settings: Settings,
        lease: Lease,
        tasks: RunningTasks,
        outcomes: OutcomeQueue,
        *,
        stop_all: Callable[[str], None],
        wake_work: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._lease = lease
        self._tasks = tasks
        self._outcomes = outcomes
        self._stop_all = stop_all
        self._wake_work = wake_work
        self.draining = False  # take nothing new
        self.stopping = False  # a drain on the way out: `rtx runner resume` cannot undo it
        self.loop = Loop("drain", self._tick, POLL)
        self._phase = "waiting"
        self._timeout = 0.0
        self._deadline = 0.0

    # -- maintenance: the row's state, as the heartbeat reads it ----------------------------------
    def on_row_state(self, state: str, db: Database) -> None:
        """Follow a drain or resume asked for through the row (heartbeat thread, its connection)."""
        if state == "draining" and not self.draining:
            log.info("runner drain requested", runner_id=self._lease.runner_id)
            self.draining = True
            self.set_state(db, "draining", ["draining"], release=True)
        elif state == "active" and self.stopping:
            log.warning("resume ignored: the runner is shutting down", runner_id=self._lease.runner_id)
            self.set_state(db, "draining", ["active"], release=True)
        elif state == "active" and self.draining:
            log.info("runner resumed", runner_id=self._lease.runner_id)
            self.draining = False
            self._wake_work()

    def set_state(self, db: Database, to_state: str, from_states: list[str], *, release: bool) -> None:
        runner_id = self._lease.runner_id
        try:
            with db.transaction() as gw:
                gw.set_runner_state(runner_id, to_state, from_states)
                if release:
                    for allocation_id in gw.release_assigned(runner_id):
                        log.info("allocation given back", allocation_id=allocation_id, runner_id=runner_id)
        except Exception as exc:  # noqa: BLE001 - the lease expiry does the same job if the database is away
            log.warning("could not update runner state", to_state=to_state, error=str(exc))

    # -- SIGTERM ----------------------------------------------------------------------------------
    def run(self, db: Database, timeout: float | None = None) -> None:
        """Drain for SIGTERM and return once the phases are done (the caller then stops the runner)."""
        self._timeout = self.settings.drain_timeout if timeout is None else timeout
        self.stopping = True
        self.draining = True
        log.info(
            "runner draining",
            runner_id=self._lease.runner_id,
            running=len(self._tasks),
            timeout=self._timeout,
        )
        self.set_state(db, "draining", ["active"], release=True)
        self._deadline = time.monotonic() + self._timeout
        self.loop.start()
        self.loop.join()

    def wake(self) -> None:
        self.loop.wake()

    def deregister(self, db: Database) -> None:
        self.set_state(db, "stopped", ["active", "draining"], release=True)

    def _tick(self) -> bool:
        now = time.monotonic()
        if self._phase == "waiting":
            if len(self._tasks) and now < self._deadline:
                return False
            if len(self._tasks):
                self._stop_all(f"runner stopped after a drain timeout of {self._timeout:g} s")
            self._phase = "stopping"
        if self._phase == "stopping":
            if len(self._tasks) and now < self._deadline + self.settings.kill_grace + 5:
                return False
            self._phase, self._deadline = "flushing", now + max(self.settings.lease_timeout, 5.0)
        if self._phase == "flushing" and len(self._outcomes) and now < self._deadline:
            self._wake_work()
            return False
        self._phase = "done"
        self.loop.stop()
        return False
