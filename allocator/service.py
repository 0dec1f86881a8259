"""rtx-allocator: places unassigned allocations on live runners.

Loops of the process (plus a metrics loop with --metrics-port):

* placement (woken by NOTIFY "<schema>.allocator": a new allocation, freed capacity, a runner that
  joined or left; polls every ``allocator_poll_interval`` otherwise). One pass is one transaction:
  take the placement lock of each live runner (a transaction-scoped advisory lock keyed from the
  runner id, id order, so allocators never deadlock), read what each already holds, claim pending
  rows per queue up to what its free slots could take (``FOR UPDATE SKIP LOCKED``), let the
  strategy decide, write the assignments. Holding the placement locks from the read of their usage
  to the commit of the assignments is what keeps the invariant below with any number of
  allocators. Passes commit asynchronously (see ``Database``) and are pipelined: four round trips,
  whatever the number of statements, which is what an allocator on another host than Postgres feels.
* upkeep (every ``heartbeat_interval``): rescue runners whose lease expired, fail requests that
  stayed unschedulable past ``unschedulable_timeout``.
  Rescue is two statements in one transaction: mark the runners whose lease expired lost, then
  sweep the work of every runner that is not live (not only those just marked): lost, stopped
  (once its last lease ran out: a runner can deregister with rows still running), or gone.
* prune (every ``PRUNE_EVERY`` s, a loop of its own so that a long prune never delays rescue):
  delete terminal allocations past ``retention`` (unreported ones past ``unreported_retention``),
  audit events past ``retention`` and runners stopped or lost past ``retention``. Each tick deletes
  one batch of at most ``PRUNE_BATCH`` rows per table, each batch its own short transaction, and
  ticks again at once while a batch was full.

Invariant: for every runner, the slots, cpu and memory of its assigned + running allocations never
exceed its capacity. Only a placement pass adds to that sum, and it does so under the placement lock
of the runner, after reading the committed sum under that same lock (READ COMMITTED takes a new
snapshot per statement, after the lock is granted). Everything else only subtracts.

Invariant: no lock placement holds delays a heartbeat or a rescue. The placement lock is an
advisory lock, never the runner row: heartbeats (``heartbeat_runner``), rescue and drains update
runner rows and never take it. An allocator that freezes mid-pass therefore stalls only the other
allocators (their lock waits end after ``lock_timeout`` and are retried), and the server ends its
session after ``idle_in_transaction_timeout``, releasing what it held.

Invariant: no allocation stays non-terminal on a runner that is not live. Nothing lands on one:
``assign`` re-checks, under the placement lock, that its runner is active with an unexpired lease,
and ``start_assigned`` that its own runner is live. What slips in while a rescue runs (a placement
or a start that commits after rescue read) is swept by the next upkeep pass, because the sweep looks
at every non-live runner. Rescue takes nothing placement holds and skips rows locked by others.

If an allocator dies mid-pass, its transaction rolls back: its claims and locks vanish with it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter

import structlog

from allocator.metrics import AllocatorMetrics
from allocator.model import Request, RunnerState
from allocator.parallelism import full_schedulers, within_parallelism
from allocator.strategies import get_strategy
from runtime_executor import autoscale
from runtime_executor.db.channels import allocator_channel
from runtime_executor.db.connection import Database
from runtime_executor.loop import Listener, Loop
from runtime_executor.settings import Settings

log = structlog.get_logger("rtx.allocator")

PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000  # rows per delete statement (one short transaction each); see bench/prune.py
HEAD_OF_QUEUE = 16  # requests always looked at per queue, even with no free capacity


def claim_limits(runners: list[RunnerState], batch_size: int) -> dict[str, int]:
    """Per queue, how many pending requests one pass claims: what the queue's free slots could
    take (each request needs at least one slot), at least the head of the queue, at most a batch."""
    free: dict[str, int] = {}
    for r in runners:
        for q in r.queues:
            free[q] = free.get(q, 0) + max(0, r.slots - r.used_slots)
    return {q: max(HEAD_OF_QUEUE, min(batch_size, n)) for q, n in free.items()}


class Allocator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.strategy = get_strategy(settings.strategy)
        self.name = f"rtx-allocator@{socket.gethostname()}:{os.getpid()}"
        self._placement_db = Database(settings, self.name, async_commit=True)
        self._upkeep_db = Database(settings, self.name + "-upkeep")
        self.placement = Loop("placement", self.place_pass, settings.allocator_poll_interval)
        self.upkeep = Loop("upkeep", self.upkeep_pass, settings.heartbeat_interval)
        # its own loop and connection: rescue (upkeep) never waits behind a prune
        self._prune_db = Database(settings, self.name + "-prune")
        self.prune = Loop("prune", self.prune_pass, PRUNE_EVERY)
        self.listener = Listener(settings, self.name + "-listen")
        self.listener.subscribe(allocator_channel(settings.schema), [lambda _payload: self.placement.wake()])
        self.metrics = AllocatorMetrics()
        # queue depth and unschedulable gauges: only when someone scrapes them (--metrics-port)
        self._metrics_db = Database(settings, self.name + "-metrics") if settings.metrics_port else None
        self.metrics_loop = (
            Loop("metrics", self.metrics_pass, settings.allocator_poll_interval) if self._metrics_db else None
        )
        self._pruned = 0  # rows deleted by the current run of full batches (logged when it ends)
        self.placed_total = 0
        self._stopped = threading.Event()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        log.info("allocator starting", strategy=self.strategy.name, allocator=self.name)
        self.listener.start()
        self.placement.start()
        self.upkeep.start()
        self.prune.start()
        if self.metrics_loop is not None:
            self.metrics_loop.start()

    def stop(self) -> None:
        """Finish the current pass (its transaction commits or rolls back), then stop."""
        self.listener.stop()
        self.placement.stop(timeout=30)
        self.upkeep.stop(timeout=30)
        self.prune.stop(timeout=30)
        if self.metrics_loop is not None and self._metrics_db is not None:
            self.metrics_loop.stop()
            self._metrics_db.close()
        self.metrics.close()
        self._placement_db.close()
        self._upkeep_db.close()
        self._prune_db.close()
        self._stopped.set()
        log.info("allocator stopped", allocator=self.name, placed=self.placed_total)

    # -- placement ------------------------------------------------------------------------------
    def place_pass(self) -> bool:
        """One placement pass; True when a queue's whole claim was placed (run again at once)."""
        started = time.perf_counter()
        # pipelined: four round trips (BEGIN + pending work, the locks and what they guard, the
        # claim, the assignment + COMMIT), each a batch: Database.transaction, Gateway.fetch_batch
        with self._placement_db.transaction(pipelined=True) as gw:
            queues, caps = gw.pending_work()
            if not queues:
                return False
            # Lock first, then read what the runners hold, then claim: see the invariant above. Only
            # the runners of queues with pending work: nothing is assigned to any other. The
            # [core] parallelism of each scheduler with capped rows waiting (allocator/parallelism.py)
            # is counted under its parallelism lock, taken after the runners' locks (in every pass).
            runner_rows, reservations, in_flight = gw.lock_for_placement(queues, list(caps))
            held = {r["runner_id"]: r for r in reservations}
            runners = [_runner_state(r, held.get(r["id"])) for r in runner_rows]
            free_limits = claim_limits(runners, self.settings.allocator_batch_size)
            # a queue with no runner still gets its head claimed: the strategy marks it unschedulable
            limits = {q: free_limits.get(q, HEAD_OF_QUEUE) for q in queues}
            claimed = gw.claim_unassigned(limits, full_schedulers(caps, in_flight))
            claimed_at = time.perf_counter()
            if not claimed:
                return False
            # ids stay the database's UUIDs end to end (no str round trips on 5,000 rows a pass)
            requests = [
                Request(r["id"], r["queue"], r["slots"], r["cpu"], r["memory_mb"], r["priority_weight"])
                for r in claimed
            ]
            result = self.strategy.place(requests, runners)
            by_id = {r["id"]: r for r in claimed}
            # what would pass a scheduler's parallelism stays unassigned; a subset of the
            # strategy's placements never overfills a runner
            result.placements = within_parallelism(result.placements, by_id, in_flight)
            placed: list[dict] = []  # the claimed rows placed, in placement order
            if result.placements:
                placed = [by_id[p.request_id] for p in result.placements]
                gw.assign_at_commit(
                    [r["ctid"] for r in placed],
                    [r["id"] for r in placed],
                    [p.runner_id for p in result.placements],
                )
            if result.unschedulable:
                for row in gw.mark_unschedulable(result.unschedulable):
                    log.warning(
                        "allocation unschedulable",
                        allocation_id=str(row["id"]),
                        dag_id=row["dag_id"],
                        task_id=row["task_id"],
                        run_id=row["run_id"],
                        reason=row["unschedulable_reason"],
                    )
            now_schedulable = [
                r["id"] for r in claimed if r["unschedulable_reason"] and r["id"] not in result.unschedulable
            ]
            if now_schedulable:
                gw.clear_unschedulable(now_schedulable)
        # observed once committed: a pass that rolled back placed nothing
        self.metrics.placement_pass.observe(time.perf_counter() - started)
        self.placed_total += len(result.placements)
        if result.placements:
            # placement latency: age at the claim (database clock) + this pass's time since
            since_claim = time.perf_counter() - claimed_at
            self.metrics.observe_placed((r["queue"], r["waited_s"] + since_claim) for r in placed)
            log.debug(
                "placement pass",
                placed=len(result.placements),
                claimed=len(claimed),
                reserved=len(result.reservations),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        placed_per_queue = Counter(r["queue"] for r in placed)
        claimed_per_queue = Counter(r.queue for r in requests)
        # more work at hand when some queue had everything it claimed placed and its claim was full
        return any(
            placed_per_queue[q] == n and n >= limits.get(q, HEAD_OF_QUEUE)
            for q, n in claimed_per_queue.items()
        )

    # -- metrics --------------------------------------------------------------------------------
    def metrics_pass(self) -> bool:
        """Queue depth, unschedulable and desired-runner gauges (only with --metrics-port): read-only queries."""
        assert self._metrics_db is not None
        with self._metrics_db.statements() as gw:
            rows = gw.metrics_allocations()
            scales = autoscale.from_rows(*gw.autoscale_rows())
        self.metrics.set_allocations(rows)
        self.metrics.set_autoscale(scales)
        return False

    # -- upkeep ---------------------------------------------------------------------------------
    def upkeep_pass(self) -> bool:
        with self._upkeep_db.transaction() as gw:
            rescued = gw.rescue_expired_runners()
        for row in rescued:  # logged and counted once committed
            self.metrics.observe_rescue(row["outcome"])
            if row["outcome"] == "runner":
                log.warning("runner lost: lease expired", runner=row["runner_name"])
            elif row["outcome"] == "returned":
                log.info(
                    "allocation returned to the pool", allocation_id=str(row["id"]), runner=row["runner_name"]
                )
            else:
                log.warning(
                    "allocation lost with its runner", allocation_id=str(row["id"]), runner=row["runner_name"]
                )
        with self._upkeep_db.transaction() as gw:
            for row in gw.fail_unschedulable(self.settings.unschedulable_timeout):
                self.metrics.unschedulable_failed.inc()
                log.error(
                    "allocation failed: unschedulable",
                    allocation_id=str(row["id"]),
                    dag_id=row["dag_id"],
                    task_id=row["task_id"],
                    reason=row["reason"],
                )
        return False

    # -- prune ----------------------------------------------------------------------------------
    def prune_pass(self) -> bool:
        """One batch per table; True while some batch was full (the loop runs again at once).

        Invariant: a prune never delays rescue and never holds much: it has its own loop and
        connection, and each statement deletes at most ``PRUNE_BATCH`` rows in its own transaction.
        """
        retention = self.settings.retention
        unreported = max(retention, self.settings.unreported_retention)
        with self._prune_db.statements() as gw:  # autocommit: each batch its own transaction
            counts = (
                gw.prune_allocations(retention, unreported, PRUNE_BATCH),
                gw.prune_events(retention, PRUNE_BATCH),
                gw.prune_runners(retention, PRUNE_BATCH),
            )
        self._pruned += sum(counts)
        more = any(n >= PRUNE_BATCH for n in counts)
        if not more and self._pruned:
            log.info("pruned finished rows", count=self._pruned)
            self._pruned = 0
        return more


def _runner_state(row: dict, held: dict | None) -> RunnerState:
    return RunnerState(
        id=row["id"],
        queues=frozenset(row["queues"]),
        slots=row["slots"],
        cpu=row["cpu"],
        memory_mb=row["memory_mb"],
        used_slots=int(held["slots"]) if held else 0,
        used_cpu=float(held["cpu"]) if held else 0.0,
        used_memory_mb=int(held["memory_mb"]) if held else 0,
    )
