"""The runner's lease: registration, heartbeats, and the deadlines fencing keeps.

States of a runner row: ``active -> draining -> stopped`` (runner.drain), and
``active | draining -> lost`` (the allocator's rescue, once ``lease_expires_at`` has passed).

The lease is ``runners.lease_expires_at``: registration sets it and every heartbeat renews it to
``now() + lease_timeout`` on the database clock, in one statement guarded by ``id = me`` and a live
state. Locally the runner keeps ``valid_until`` = (monotonic time the heartbeat was *sent*) +
lease_timeout, which is never later than the database's view, since the database's clock read the
renewal after it was sent. From that:

* a task starts only while ``valid_until`` is more than one heartbeat interval away and more than
  the fencing lead (``may_start``); a launch that comes back after fencing began counts as a failed
  start (runner.starts);
* fencing: rescue marks the work lost once ``lease_expires_at`` passes, and Airflow
  (``retry_delay=0``) may start the retry at once, so the old process must be dead by then. A runner
  that cannot renew sends SIGTERM at ``term_at()`` = ``valid_until - kill_grace - FENCE_MARGIN`` and
  SIGKILLs every task's whole tree at ``kill_at()`` = ``valid_until - FENCE_MARGIN``; the reaper
  (runner.reaper) wakes for both deadlines. ``validate_fencing`` refuses settings in which a lease
  renewed on time would ever come that close;
* a heartbeat that finds the row no longer live (``renew`` returns None) means it was declared lost
  and its work rescued: the runner fences its tasks, then ``register_again`` under a fresh id, so a
  stale id can never overwrite a rescue (every allocation write is guarded by ``runner_id = me``).

Failure cases: a heartbeat that fails (database away) leaves ``valid_until`` where it was, so the
deadlines above draw nearer on their own; the heartbeat loop retries at most every heartbeat
interval. A heartbeat runs on its own connection and never waits on work.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

import structlog

from runtime_executor.db.connection import Database
from runtime_executor.settings import FENCE_MARGIN, Settings

log = structlog.get_logger("rtx.runner")


@dataclass(frozen=True)
class Renewal:
    """What a renewal read: the row's state, and what the runner's slow poll would have found
    (``heartbeat_runner.sql``): work to start or cancel, a row running longer than a lease."""

    state: str
    has_work: bool
    stale_running: bool


@dataclass(frozen=True)
class Capacity:
    slots: int
    cpu: float
    memory_mb: int


class Lease:
    def __init__(
        self, settings: Settings, capacity: Capacity, queues: list[str], name: str | None = None
    ) -> None:
        self.settings = settings
        self.capacity = capacity
        self.queues = queues
        self.hostname = socket.gethostname()
        self.name = name or f"{self.hostname}:{os.getpid()}"  # a display name; the id is fresh per process
        self.runner_id = str(uuid.uuid4())
        self.valid_until = 0.0

    def register(self, db: Database) -> None:
        """Insert this runner's row (``active``) with a fresh lease."""
        sent = time.monotonic()
        with db.transaction() as gw:
            gw.register_runner(
                id=self.runner_id,
                name=self.name,
                hostname=self.hostname,
                pid=os.getpid(),
                queues=self.queues,
                slots=self.capacity.slots,
                cpu=self.capacity.cpu,
                memory_mb=self.capacity.memory_mb,
                version=_version(),
                lease_timeout=self.settings.lease_timeout,
            )
        self.valid_until = sent + self.settings.lease_timeout
        log.info(
            "runner registered",
            runner_id=self.runner_id,
            runner=self.name,
            queues=self.queues,
            slots=self.capacity.slots,
            cpu=self.capacity.cpu,
            memory_mb=self.capacity.memory_mb,
        )

    def renew(self, db: Database, **usage: float) -> Renewal | None:
        """One heartbeat: the row's state (``active`` or ``draining``) and what waits for the
        runner, or None once it is not live (declared lost). Only a renewal that succeeded moves
        ``valid_until``."""
        sent = time.monotonic()
        with db.statements() as gw:  # one guarded statement: autocommit saves BEGIN/COMMIT (docs/scaling.md)
            row = gw.heartbeat_runner(self.runner_id, self.settings.lease_timeout, **usage)
        if row is None:
            return None
        self.valid_until = sent + self.settings.lease_timeout
        return Renewal(row["state"], row["has_work"], row["stale_running"])

    def register_again(self, db: Database) -> None:
        """After being declared lost (and fencing): a fresh id, so the old one stays rescued."""
        old = self.runner_id
        self.runner_id = str(uuid.uuid4())
        log.warning(
            "runner was declared lost; registering again", old_runner_id=old, runner_id=self.runner_id
        )
        self.register(db)

    # -- the deadlines ---------------------------------------------------------------------------
    def fence_lead(self) -> float:
        """How long before ``valid_until`` fencing begins (SIGTERM; SIGKILL FENCE_MARGIN before it)."""
        return self.settings.kill_grace + FENCE_MARGIN

    def term_at(self) -> float:
        return self.valid_until - self.fence_lead()

    def kill_at(self) -> float:
        return self.valid_until - FENCE_MARGIN

    def may_start(self) -> bool:
        left = self.valid_until - time.monotonic()
        return left > self.settings.heartbeat_interval and left > self.fence_lead()

    def fencing_begun(self) -> bool:
        return time.monotonic() >= self.term_at()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rtx-runtime-executor")
    except Exception:  # noqa: BLE001
        return "unknown"
