"""Outcomes: how a task's end reaches the database, at least once and never against a rescue.

An outcome is queued in memory (the reaper, a failed launch, the orphan check) and written by the
work loop, oldest first, one guarded statement each:

* ``finish_allocation``: ``running -> succeeded | failed`` (``cancelled`` when revoked meanwhile),
  guarded by ``runner_id`` = the id the task ran under (a re-registration does not change it);
* ``retry_start`` for a start that failed before any of the task's code ran:
  ``running | assigned -> unassigned`` (placed again, the same Airflow try) until ``start_retries``
  are spent, then ``failed`` with every attempt's reason.

An outcome leaves the queue only after its statement returned, so:

* database away, or the connection lost mid-statement: the statement raises, the outcome stays
  first in the queue, and the work loop retries with backoff. If the lost statement had committed,
  the second write changes nothing (the row is no longer in its from-state) and is logged as not
  recorded;
* the row was rescued meanwhile (lease expired: ``lost``, or revoked): the guard matches nothing,
  the statement returns None, and the outcome is dropped with a warning; the rescue stands;
* the runner dies with outcomes queued: they are gone, and the allocator's upkeep marks those rows
  lost once the lease has run out (reported failed, so Airflow's retries apply).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings

if TYPE_CHECKING:
    from runner.metrics import RunnerMetrics

log = structlog.get_logger("rtx.runner")


@dataclass(frozen=True)
class Outcome:
    allocation_id: str
    runner_id: str
    state: str
    exit_code: int | None
    reason: str | None
    # The start failed before any of the task's code ran (no task process exists): the row goes back
    # for placement (retry_start.sql) instead of failing, up to start_retries times.
    start_failed: bool = False


class OutcomeQueue:
    def __init__(self, settings: Settings, db: Database, metrics: RunnerMetrics) -> None:
        self.settings = settings
        self._db = db  # the work loop's connection: only the work loop flushes
        self._metrics = metrics
        self._queue: deque[Outcome] = deque()  # appended from any thread, popped by the work loop

    def append(self, outcome: Outcome) -> None:
        self._queue.append(outcome)

    def __len__(self) -> int:
        return len(self._queue)

    def allocation_ids(self) -> set[str]:
        return {o.allocation_id for o in tuple(self._queue)}

    def flush(self) -> None:
        """Write every queued outcome (work loop only); raises, keeping the rest, if the database fails."""
        while self._queue:
            outcome = self._queue[0]
            with self._db.statements() as gw:
                if outcome.start_failed:
                    state = gw.retry_start(
                        outcome.allocation_id,
                        outcome.runner_id,
                        outcome.reason or "",
                        self.settings.start_retries,
                    )
                else:
                    state = gw.finish_allocation(
                        outcome.allocation_id,
                        outcome.runner_id,
                        outcome.state,
                        outcome.exit_code,
                        outcome.reason,
                    )
            self._queue.popleft()
            self._logged(outcome, state)

    def _logged(self, outcome: Outcome, state: str | None) -> None:
        if state == "unassigned":
            log.warning(
                "task start failed before it ran; put back for placement",
                allocation_id=outcome.allocation_id,
                runner_id=outcome.runner_id,
                reason=outcome.reason,
            )
            return
        self._metrics.observe_completion(state or "lost")
        if state is None:
            log.warning(
                "outcome not recorded: allocation no longer running on this runner (rescued)",
                allocation_id=outcome.allocation_id,
                runner_id=outcome.runner_id,
            )
        else:
            log.info(
                "task finished",
                allocation_id=outcome.allocation_id,
                runner_id=outcome.runner_id,
                state=state,
                exit_code=outcome.exit_code,
                reason=outcome.reason,
            )
