"""The one gateway to rtx's tables. Every SQL statement is a named file in ``queries/``.

``Gateway`` wraps any DB-API connection whose cursors take ``%(name)s`` parameters: a psycopg 3
connection of a daemon, or the raw connection under the scheduler's SQLAlchemy session (so the
shim's insert commits in the scheduler's own transaction). The caller owns the transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from runtime_executor.settings import check_schema_name

Row = dict[str, Any]


@functools.cache
def _raw_query(name: str) -> str:
    return resources.files("runtime_executor.db").joinpath("queries", f"{name}.sql").read_text()


def for_schema(sql: str, schema: str) -> str:
    """``sql`` with ``{schema}`` replaced by the quoted ``schema``, validated first so that it is safe
    to splice in; the one way rtx's SQL (queries, migrations, the benchmarks' fixtures) names it."""
    return sql.replace("{schema}", f'"{check_schema_name(schema)}"')


@functools.cache
def query(name: str, schema: str) -> str:
    """The SQL of ``queries/<name>.sql`` for ``schema``."""
    return for_schema(_raw_query(name), schema)


def _assignments(ctids: Sequence[str], ids: Sequence[Any], runner_ids: Sequence[Any]) -> dict[str, list[Any]]:
    return {"ctids": list(ctids), "ids": list(ids), "runner_ids": list(runner_ids)}


def _rows(cur: Any) -> list[Row]:
    if cur.description is None:
        return []
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


class Gateway:
    """``pipeline``: the psycopg pipeline the connection is in (``Database.transaction(pipelined=True)``):
    each ``fetch`` / ``execute`` then waits for its own answer (one round trip), ``fetch_batch`` for
    all of its statements at once, and ``send`` not at all."""

    def __init__(self, conn: Any, schema: str, pipeline: Any = None) -> None:
        self.conn = conn
        self.schema = schema
        self._pipeline = pipeline

    # -- plumbing -------------------------------------------------------------------------------
    def fetch(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        return self.fetch_batch([(name, params)])[0]

    def execute(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        cur = self.conn.cursor()
        try:
            cur.execute(query(name, self.schema), params or {})
            if self._pipeline is not None:
                self._pipeline.sync()  # the answer, with its rowcount
            return cur.rowcount
        finally:
            cur.close()

    def send(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        """A statement whose answer is not awaited: in a pipelined transaction it goes out with the
        next round trip, at the latest the COMMIT, and an error of it fails that (the transaction
        rolls back, the caller's block raises). Elsewhere it runs at once, as ``execute``."""
        self.conn.cursor().execute(query(name, self.schema), params or {})

    def fetch_batch(self, calls: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[list[Row]]:
        """The rows of each of ``calls`` (query name, parameters). In a pipelined transaction the
        statements go out together and are answered in one round trip; elsewhere one after the
        other. The server runs them in order either way, each with a snapshot of its own under READ
        COMMITTED: a statement after a lock in the batch sees what committed before the lock was
        granted. The first error aborts the rest (and the transaction), as it would in sequence."""
        cursors = []
        try:
            for name, params in calls:
                cur = self.conn.cursor()
                cursors.append(cur)
                cur.execute(query(name, self.schema), params or {})
            if self._pipeline is not None:
                self._pipeline.sync()
            return [_rows(cur) for cur in cursors]
        finally:
            for cur in cursors:
                cur.close()

    # -- shim -----------------------------------------------------------------------------------
    def insert_allocation(self, **row: Any) -> int:
        return self.execute("insert_allocation", {"max_running": None, **row})

    def unreported_outcomes(self, job_id: int | None) -> list[Row]:
        """State changes owed to the scheduler; reading marks nothing (see mark_reported)."""
        return self.fetch("unreported_outcomes", {"job_id": job_id})

    report_outcomes = unreported_outcomes  # the older name (tests read what is owed with it)

    def mark_reported(self, ids: Sequence[str], states: Sequence[str], job_id: int | None) -> list[Row]:
        """Mark delivered rows reported, each only while still in the state delivered; returns those marked."""
        return self.fetch("mark_reported", {"ids": list(ids), "states": list(states), "job_id": job_id})

    def cancel_allocations(self, ids: Sequence[str]) -> list[Row]:
        return self.fetch("cancel_allocations", {"ids": list(ids)})

    def adopt_allocations(self, ids: Sequence[str], job_id: int | None) -> list[Row]:
        return self.fetch("adopt_allocations", {"ids": list(ids), "job_id": job_id})

    def tracked_allocations(self, ids: Sequence[str]) -> set[str]:
        return {str(r["id"]) for r in self.fetch("tracked_allocations", {"ids": list(ids)})}

    # -- allocator ------------------------------------------------------------------------------
    def lock_live_runners(self, queues: Sequence[str] | None = None) -> list[Row]:
        """Lock (placement's advisory lock) and read the live active runners serving any of
        ``queues`` (None: every one)."""
        return self.fetch("lock_live_runners", {"queues": list(queues) if queues is not None else None})

    def pending_work(self) -> tuple[list[str], dict[int, int]]:
        """The queues with pending work (``pending_queues``) and the schedulers with capped rows
        waiting, each with its parallelism (``pending_capped_schedulers``), in one round trip."""
        queues, capped = self.fetch_batch([("pending_queues", None), ("pending_capped_schedulers", None)])
        return [r["queue"] for r in queues], {r["job_id"]: r["max_running"] for r in capped}

    def lock_for_placement(
        self, queues: Sequence[str], job_ids: Sequence[int]
    ) -> tuple[list[Row], list[Row], dict[int, int]]:
        """A placement pass's locks and what it reads under them, in one round trip, in this order:
        lock the live runners serving ``queues`` (``lock_live_runners``), read what the runners of
        those queues hold (``runner_reservations``: a superset of the runners locked, as a runner's
        queues never change once registered), then, with ``job_ids``, the parallelism locks of
        these schedulers and what each has in flight (``lock_schedulers``, ``scheduler_in_flight``).
        Each read is a statement after its lock, so its snapshot follows the lock (see fetch_batch).
        Returns (locked runners, reservations, in flight per scheduler)."""
        ids = sorted(set(job_ids))
        calls: list[tuple[str, Mapping[str, Any] | None]] = [
            ("lock_live_runners", {"queues": list(queues)}),
            ("runner_reservations", {"queues": list(queues)}),
        ]
        if ids:
            calls += [("lock_schedulers", {"job_ids": ids}), ("scheduler_in_flight", {"job_ids": ids})]
        runners, held, *parallelism = self.fetch_batch(calls)
        in_flight = {r["job_id"]: r["in_flight"] for r in parallelism[1]} if ids else {}
        return runners, held, in_flight

    def claim_unassigned(self, limits: dict[str, int], full: Sequence[int] = ()) -> list[Row]:
        """Claim up to ``limits[queue]`` pending rows of each queue in ``limits``, none of a
        scheduler in ``full`` (at its parallelism)."""
        return self.fetch(
            "claim_unassigned", {"queues": list(limits), "limits": list(limits.values()), "full": list(full)}
        )

    def assign(self, ctids: Sequence[str], ids: Sequence[Any], runner_ids: Sequence[Any]) -> int:
        """Assign the claimed rows (``ctid`` and ``id`` as claim_unassigned returned them); how many were."""
        return self.execute("assign", _assignments(ctids, ids, runner_ids))

    def assign_at_commit(self, ctids: Sequence[str], ids: Sequence[Any], runner_ids: Sequence[Any]) -> None:
        """``assign``, sent with the pipelined pass's COMMIT (``send``): a row its guard turns away
        stays unassigned and is placed by a later pass, so its count is not awaited."""
        self.send("assign", _assignments(ctids, ids, runner_ids))

    def mark_unschedulable(self, reasons: Mapping[str, str]) -> list[Row]:
        return self.fetch("mark_unschedulable", {"ids": list(reasons), "reasons": list(reasons.values())})

    def clear_unschedulable(self, ids: Sequence[str]) -> int:
        return self.execute("clear_unschedulable", {"ids": list(ids)})

    def fail_unschedulable(self, timeout: float) -> list[Row]:
        return self.fetch("fail_unschedulable", {"timeout": timeout})

    def rescue_expired_runners(self) -> list[Row]:
        """Mark runners whose lease expired lost, then sweep every non-live runner's work (two
        statements in the caller's transaction: the sweep's snapshot sees the first's changes)."""
        return self.fetch("rescue_expired_runners") + self.fetch("rescue_stranded_allocations")

    # prunes: one batch each, at most ``limit`` rows; run each as its own statement (autocommit)
    def prune_allocations(self, retention: float, unreported_retention: float, limit: int) -> int:
        return self.execute(
            "prune_allocations",
            {"retention": retention, "unreported_retention": unreported_retention, "limit": limit},
        )

    def prune_events(self, retention: float, limit: int) -> int:
        return self.execute("prune_events", {"retention": retention, "limit": limit})

    def prune_runners(self, retention: float, limit: int) -> int:
        return self.execute("prune_runners", {"retention": retention, "limit": limit})

    # -- runner ---------------------------------------------------------------------------------
    def register_runner(self, **row: Any) -> None:
        self.execute("register_runner", row)

    def heartbeat_runner(self, runner_id: str, lease_timeout: float, **usage: Any) -> Row | None:
        """The renewed row's ``state``, ``has_work`` and ``stale_running``; None once it is not live."""
        rows = self.fetch(
            "heartbeat_runner",
            {
                "runner_id": runner_id,
                "lease_timeout": lease_timeout,
                "host_cpu_percent": usage.get("host_cpu_percent"),
                "host_memory_used_mb": usage.get("host_memory_used_mb"),
            },
        )
        return rows[0] if rows else None

    def set_runner_state(self, runner_id: str, to_state: str, from_states: Sequence[str]) -> bool:
        rows = self.fetch(
            "set_runner_state",
            {"runner_id": runner_id, "to_state": to_state, "from_states": list(from_states)},
        )
        return bool(rows)

    def start_assigned(self, runner_id: str) -> list[Row]:
        rows = self.fetch("start_assigned", {"runner_id": runner_id})
        return sorted(rows, key=lambda r: -r["priority_weight"])

    def set_allocation_pids(self, runner_id: str, pids: dict[str, int]) -> None:
        self.execute(
            "set_allocation_pid", {"runner_id": runner_id, "ids": list(pids), "pids": list(pids.values())}
        )

    def finish_allocation(
        self, allocation_id: str, runner_id: str, state: str, exit_code: int | None, reason: str | None
    ) -> str | None:
        rows = self.fetch(
            "finish_allocation",
            {
                "id": allocation_id,
                "runner_id": runner_id,
                "state": state,
                "exit_code": exit_code,
                "reason": reason,
            },
        )
        return rows[0]["state"] if rows else None

    def retry_start(self, allocation_id: str, runner_id: str, reason: str, retries: int) -> str | None:
        """A start that failed before any task code ran: back to unassigned, or failed once ``retries``
        re-placements are spent; None when the row is no longer this runner's to start."""
        rows = self.fetch(
            "retry_start", {"id": allocation_id, "runner_id": runner_id, "reason": reason, "retries": retries}
        )
        return rows[0]["state"] if rows else None

    def update_usage(
        self,
        ids: Sequence[str],
        runner_ids: Sequence[str],
        cpu_percents: Sequence[float],
        rss_mbs: Sequence[int],
    ) -> int:
        """One usage sample of running allocations (latest cpu and memory, peak memory), in one statement."""
        return self.execute(
            "update_usage",
            {
                "ids": list(ids),
                "runner_ids": list(runner_ids),
                "cpu_percents": list(cpu_percents),
                "rss_mbs": list(rss_mbs),
            },
        )

    def release_assigned(self, runner_id: str) -> list[str]:
        return [str(r["id"]) for r in self.fetch("release_assigned", {"runner_id": runner_id})]

    def running_on_runner(self, runner_id: str, older_than: float) -> list[str]:
        return [
            str(r["id"])
            for r in self.fetch("running_on_runner", {"runner_id": runner_id, "older_than": older_than})
        ]

    def cancel_requested_on_runner(self, runner_id: str) -> list[str]:
        return [str(r["id"]) for r in self.fetch("cancel_requested_on_runner", {"runner_id": runner_id})]

    # -- rtx runner drain / resume ---------------------------------------------------------------
    def find_live_runners(self, ref: str) -> list[Row]:
        """Active or draining runners whose id or name is ``ref`` (a name may be shared)."""
        return self.fetch("find_runner", {"ref": ref})

    # -- status ---------------------------------------------------------------------------------
    def read_only(self, statement_timeout_ms: int) -> None:
        """Make the caller's transaction read-only, each statement bounded (the status page)."""
        self.fetch("read_only_transaction", {"statement_timeout": str(statement_timeout_ms)})

    def status_runners(self, recent: float = 300.0) -> list[Row]:
        return self.fetch("status_runners", {"recent": recent})

    def status_allocations(self, limit: int = 1000) -> list[Row]:
        return self.fetch("status_allocations", {"limit": limit})

    def count_by_state(self) -> list[Row]:
        return self.fetch("count_by_state")

    def run_placements(self, dag_id: str, run_id: str) -> list[Row]:
        """Each task allocation of one DAG run with the runner it went to (task_id, map_index -1 when
        unmapped, runner, slots, cpu, memory_mb), oldest try first: the demo's table of its run."""
        return self.fetch("run_placements", {"dag_id": dag_id, "run_id": run_id})

    def autoscale_rows(self) -> tuple[list[Row], list[Row]]:
        """(demand by queue and request shape, live active runners by queue and size): runtime_executor.autoscale."""
        return self.fetch("autoscale_demand"), self.fetch("autoscale_runners")

    # -- metrics --------------------------------------------------------------------------------
    def metrics_allocations(self) -> list[Row]:
        return self.fetch("metrics_allocations")

    def executor_metrics(self) -> Row:
        return self.fetch("executor_metrics")[0]
