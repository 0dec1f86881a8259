"""RuntimeExecutor: the shim the Airflow scheduler loads.

It only writes allocation requests into rtx's own schema and reads outcomes back; it never touches
Airflow's tables and never runs a task itself.

* ``queue_workload`` inserts one allocation per task (or callback) in the scheduler's own
  transaction when rtx shares Airflow's database, so the row exists exactly when the task instance
  is QUEUED. The allocation id is the external executor id the scheduler pre-assigned.
* ``sync`` reports every outcome (and a callback's start) at least once (a second delivery changes
  nothing): it reads what is owed, pushes it to the event buffer, then marks those rows reported.
  A task's start is not reported: the task tells Airflow itself (unreported_outcomes.sql says why).
* A bad resource request is stored as a failed allocation with its reason, so the task fails at
  once with a message naming it and the value, and the scheduler carries on.
* With a separate rtx database (``RTX_DATABASE_URL``) that cannot be reached, a queued workload
  waits in BaseExecutor's own queue (``queued_tasks``; the task stays QUEUED in Airflow) and the
  next heartbeat's ``trigger_tasks`` inserts it once the database answers; sync, revoke and adopt
  skip database work until a background probe has reconnected (docs/reliability.md).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from airflow.configuration import conf
from airflow.executors.base_executor import BaseExecutor
from airflow.models.taskinstancekey import TaskInstanceKey

from runtime_executor import airflow_compat as compat
from runtime_executor.db.connection import Database, DatabaseUnavailable, connect
from runtime_executor.db.gateway import Gateway
from runtime_executor.db.migrate import SchemaMismatch, check_schema
from runtime_executor.executor_stats import ExecutorStats
from runtime_executor.failure_log import FailureLogWriter
from runtime_executor.resources import BadResourceRequest, ResourceRequest, request_from_task
from runtime_executor.settings import (
    ConfigError,
    Settings,
    error_line,
    load_settings,
    redact_url,
    to_libpq_url,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

RECONCILE_EVERY = 60.0
# slots_occupied reads outcomes too, at most this often: the scheduler reads it once or twice a loop
OUTCOMES_FRESH_S = 0.1
DAG_VERSIONS_CACHED = 256  # DAG versions whose tasks' ``resources=`` the shim keeps in memory
OUTAGE_PROBE_FIRST = 0.5  # s after rtx's database became unreachable, then doubling ...
OUTAGE_PROBE_MAX = 15.0  # ... up to this: the longest a recovered database goes unnoticed

T = TypeVar("T")


class _OutageGate:
    """Whether rtx's own database is known to be unreachable.

    Invariant: while it is, no scheduler call (queue_workload, sync, revoke_task,
    try_adopt_task_instances, heartbeat) waits on it: each skips its database work at once. Only
    the call that finds the outage pays (at most one connect timeout). A background thread probes
    with a fresh connection, backing off exponentially, and opens the gate when one succeeds.
    """

    def __init__(self, probe: Callable[[], None], log: Any) -> None:
        self._probe = probe
        self._log = log
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.cause = ""
        self._closed = threading.Event()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def describe(self) -> str:
        since = self._down_since
        held = f" for {time.monotonic() - since:.0f} s" if since is not None else ""
        return f"rtx's database is unreachable{held} ({self.cause}); retrying in the background"

    def trip(self, cause: str) -> None:
        with self._lock:
            self.cause = cause
            if self._down_since is not None or self._closed.is_set():
                return
            self._down_since = time.monotonic()
            threading.Thread(target=self._run, name="rtx-executor-db-probe", daemon=True).start()
        self._log.warning(
            "RuntimeExecutor: rtx's database is unreachable (%s); the scheduler carries on without it "
            "(workloads wait in the executor's queue) until it answers again",
            cause,
        )

    def _run(self) -> None:
        delay = OUTAGE_PROBE_FIRST
        while not self._closed.wait(delay):
            try:
                self._probe()
            except Exception as exc:  # noqa: BLE001 - still down: try again later
                self.cause = error_line(exc)
                delay = min(delay * 2, OUTAGE_PROBE_MAX)
                continue
            with self._lock:
                since, self._down_since = self._down_since, None
            self._log.warning(
                "RuntimeExecutor: rtx's database answers again (after %.1f s)",
                time.monotonic() - (since or 0.0),
            )
            return

    def close(self) -> None:
        self._closed.set()


class RuntimeExecutor(BaseExecutor):
    supports_callbacks = True
    supports_ad_hoc_ti_run = True
    pre_assigns_external_executor_id = True
    is_local = False
    serve_logs = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Cheap on purpose: the api-server instantiates executors too. Connections open in start().
        super().__init__(*args, **kwargs)
        self._settings: Settings | None = None
        self._db: Database | None = None
        self._shares_airflow_db = True
        self._allocation_ids: dict[Any, str] = {}
        self._dag_resources: dict[str, dict[str, Any]] = {}  # dag_version_id -> {task_id: resources}
        self._last_reconcile = time.monotonic()
        self._outcomes_read_at = 0.0  # monotonic time of the last read of outcomes (sync or slots_occupied)
        self._stats = ExecutorStats(self.log)
        self._gate = _OutageGate(self._probe, self.log)
        self._held_rows: dict[Any, dict[str, Any]] = {}  # workloads waiting for rtx's database
        self._pending_cancels: set[str] = set()  # revokes asked for while it was unreachable
        self._failure_log = FailureLogWriter()  # reasons of rtx-decided failures into task logs

    # -- start / stop -----------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        if self._settings is None:
            airflow_conn = conf.get("database", "sql_alchemy_conn")
            settings = load_settings(airflow_url=airflow_conn)
            try:
                airflow_url = to_libpq_url(airflow_conn)
            except ConfigError:
                airflow_url = ""  # Airflow on another database engine: rtx needs RTX_DATABASE_URL then
            self._shares_airflow_db = bool(airflow_url) and _same_database(settings.database_url, airflow_url)
            self._settings = settings
        return self._settings

    def start(self) -> None:
        """Health check: fail loudly (and clearly) when rtx's database or schema is not usable."""
        problem = compat.version_problem()
        if problem:
            raise RuntimeError(f"RuntimeExecutor cannot start: {problem}")
        settings = self.settings
        try:
            conn = connect(settings, "rtx-executor-start")
            try:
                check_schema(conn, settings.schema)
            finally:
                conn.close()
        except (DatabaseUnavailable, SchemaMismatch, ConfigError) as exc:
            raise RuntimeError(f"RuntimeExecutor cannot start: {redact_url(str(exc))}") from None
        except psycopg.Error as exc:
            raise RuntimeError(f"RuntimeExecutor cannot start: {error_line(exc)}") from None
        self._db = Database(settings, f"rtx-executor:{self.job_id}")
        self._failure_log.start()
        self.log.info(
            "RuntimeExecutor started (schema %s, %s database)",
            settings.schema,
            "Airflow's" if self._shares_airflow_db else "a separate",
        )

    def end(self) -> None:
        self.sync()
        if self._held_rows:
            self.log.warning(
                "RuntimeExecutor stops with %d workload(s) never written to rtx's database; Airflow "
                "reschedules them (they are not adopted)",
                len(self._held_rows),
            )
        self.terminate()

    def terminate(self) -> None:
        self._failure_log.stop()
        self._gate.close()
        if self._db is not None:
            self._db.close()

    # -- parallelism ------------------------------------------------------------------------------
    @property
    def slots_occupied(self) -> int:
        """What counts against ``[core] parallelism`` in the scheduler: every workload handed to rtx
        and not yet finished, less ``queue_ahead`` of them. The scheduler so keeps up to
        parallelism + queue_ahead tasks with rtx; rtx's allocator runs at most parallelism of them
        at once (each row carries it as ``max_running``, allocator/parallelism.py), and the rest wait
        in rtx's queue, placed the moment a slot frees rather than after the scheduler's next loop
        has seen the finish. LocalExecutor does the same with its queue to a fixed pool of workers.
        Off by default (0): a task waiting there is QUEUED in Airflow, and one that waits longer than
        ``[scheduler] task_queued_timeout`` (behind tasks that run longer) is revoked and requeued.
        (BaseExecutor.heartbeat's ``open_slots`` metric still counts all of them.)

        Outcomes are read here as well as in ``sync()``: the scheduler asks this right before it
        queues (its critical section), which comes before the executor heartbeat in its loop, so a
        task that finished since the last heartbeat would hold its slot for one more loop (the
        loop's scheduling of every DAG run: 0.2-0.5 s under a burst, docs/performance.md). Only once
        started (the api-server's executors never query) and at most every ``OUTCOMES_FRESH_S``."""
        if self._db is not None and time.monotonic() - self._outcomes_read_at >= OUTCOMES_FRESH_S:
            self._take_outcomes()
        return max(0, super().slots_occupied - self._queue_ahead())

    @property
    def slots_available(self) -> int:
        return self.parallelism - self.slots_occupied

    def _queue_ahead(self) -> int:
        ahead = self.settings.queue_ahead
        return self.parallelism if ahead < 0 else ahead

    # -- queueing ---------------------------------------------------------------------------------
    def queue_workload(self, workload: Any, session: Session) -> None:
        if compat.is_task(workload):
            self._queue_task(workload, session)
        elif compat.is_callback(workload):
            self._queue_callback(workload, session)
        else:
            super().queue_workload(workload, session)

    def _process_workloads(self, workloads_: Sequence[Any]) -> None:
        """``trigger_tasks`` (every heartbeat) hands back what waits in ``queued_tasks`` and
        ``queued_callbacks``: only workloads queue_workload could not write while rtx's database was
        unreachable. Write them now; if it still cannot be reached they wait for the next heartbeat."""
        for workload in workloads_:
            key = compat.workload_key(workload)
            row = self._held_rows.get(key)
            if row is None:  # not one of ours (never happens): do not keep it forever
                self.log.error("RuntimeExecutor: no allocation row for queued workload %s; dropped", key)
                self._unqueue(key)
                continue
            if not self._try_insert(key, row):
                return
            self._unqueue(key)

    def _queue_task(self, workload: Any, session: Session) -> None:
        ti = workload.ti
        key = ti.key
        # pre-assigned by the scheduler (3.2+); 3.1's workload has no such field
        allocation_id = str(getattr(ti, "external_executor_id", None) or uuid.uuid4())
        state, reason = "unassigned", None
        try:
            request = request_from_task(ti.executor_config, self._airflow_resources(ti))
        except Exception as exc:  # noqa: BLE001
            # Invariant: no DAG input raises out of queue_workload into the scheduler. Parsing
            # raises only BadResourceRequest (resources.py); anything else is a bug, and it too
            # fails only this task, with its name and the cause.
            request = ResourceRequest()
            state = "failed"
            what = (
                f"has a bad resource request: {exc}"
                if isinstance(exc, BadResourceRequest)
                else f"has a resource request rtx cannot read ({type(exc).__name__}: {str(exc)[:200]})"
            )
            reason = (
                f"task {ti.dag_id}.{ti.task_id} (run {ti.run_id}, map_index {ti.map_index}, try {ti.try_number}) "
                f"{what}"
            )
            self.log.error("%s", reason)
            self.log_task_event(event="runtime executor: bad resource request", extra=reason, ti_key=key)
        self._submit(
            session,
            key,
            workload,
            id=allocation_id,
            kind="task",
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=ti.map_index,
            try_number=ti.try_number,
            callback_id=None,
            queue=ti.queue or "default",
            priority_weight=ti.priority_weight or 1,
            slots=request.slots,
            cpu=request.cpu,
            memory_mb=request.memory_mb,
            state=state,
            workload=workload.model_dump_json() if state == "unassigned" else None,
            scheduler_job_id=self.job_id,
            max_running=self.parallelism,
            reason=reason,
        )

    def _queue_callback(self, workload: Any, session: Session) -> None:
        key = compat.workload_key(workload)
        allocation_id = str(uuid.uuid4())
        self._submit(
            session,
            key,
            workload,
            id=allocation_id,
            kind="callback",
            dag_id=None,
            task_id=None,
            run_id=None,
            map_index=None,
            try_number=None,
            callback_id=str(workload.callback.id),
            queue="default",
            priority_weight=1,
            slots=1,
            cpu=0.0,
            memory_mb=0,
            state="unassigned",
            workload=workload.model_dump_json(),
            scheduler_job_id=self.job_id,
            max_running=self.parallelism,
            reason=None,
        )

    def _submit(self, session: Session, key: Any, workload: Any, /, **row: Any) -> None:
        if self._shares_airflow_db:
            # Same transaction as the task instance's QUEUED state: both commit or neither does.
            Gateway(session.connection().connection, self.settings.schema).insert_allocation(**row)
            self._track(key, row["id"])
            return
        # A separate rtx database. Invariant: its outage never raises out of queue_workload. The
        # workload waits in BaseExecutor's own queue (so it counts against parallelism, has_task()
        # sees it, and revoke_task drops it) and _process_workloads writes it when it can.
        if not self._try_insert(key, row):
            self._held_rows[key] = row
            if compat.is_callback(workload):
                self.queued_callbacks[key] = workload
            else:
                self.queued_tasks[key] = workload

    def _try_insert(self, key: Any, row: dict[str, Any]) -> bool:
        """Write one allocation to rtx's own database; False while that cannot be reached."""
        try:
            self._with_db(lambda gw: gw.insert_allocation(**row))
        except DatabaseUnavailable:
            return False
        except Exception as exc:  # noqa: BLE001 - reachable, yet refused (schema gone, a bug): fail it
            info = f"rtx: could not queue allocation {row['id']}: {type(exc).__name__}: {error_line(exc)}"
            self.log.error("%s (%s)", info, key)
            self.fail(key, info=info)
            return True
        self._track(key, str(row["id"]))
        return True

    def _track(self, key: Any, allocation_id: str) -> None:
        self.running.add(key)
        self._allocation_ids[key] = allocation_id
        if isinstance(key, TaskInstanceKey):
            compat.announce_external_id(self, key, allocation_id)

    def _unqueue(self, key: Any) -> None:
        self.queued_tasks.pop(key, None)
        self.queued_callbacks.pop(key, None)
        self._held_rows.pop(key, None)

    def _airflow_resources(self, ti: Any) -> Any:
        """Airflow's own ``resources=`` of the task (not on the TI: read from the serialized DAG).

        Read once per DAG version for all its tasks: deserializing the DAG for each task would cost
        the scheduler O(tasks) per task, O(tasks²) per run of a wide DAG (measured: about 20 ms of
        scheduler CPU per task of a 64-task fan-out, docs/performance.md)."""
        if isinstance(ti.executor_config, dict) and "runtime" in ti.executor_config:
            return None
        version = str(ti.dag_version_id)
        by_task = self._dag_resources.get(version)
        if by_task is None:
            try:
                from airflow.utils.session import create_session

                # Its own session: a failed lookup must not abort the scheduler's transaction, and
                # the scheduler forbids commits (even of a savepoint) on its own session here.
                with create_session(scoped=False) as own_session:
                    dag = compat.dag_of_version(ti.dag_version_id, own_session)
                    tasks = dag.tasks if dag is not None else ()
                    by_task = {
                        t.task_id: r for t in tasks if (r := getattr(t, "resources", None)) is not None
                    }
            except Exception:  # noqa: BLE001 - resources are optional; never fail queueing over them
                self.log.warning("could not read resources of %s.%s", ti.dag_id, ti.task_id, exc_info=True)
                return None  # not cached: the next task of this DAG version tries again
            if len(self._dag_resources) >= DAG_VERSIONS_CACHED:
                self._dag_resources.pop(next(iter(self._dag_resources)))  # the oldest
            self._dag_resources[version] = by_task
        return by_task.get(ti.task_id)

    # -- outcomes ---------------------------------------------------------------------------------
    def _database(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings, f"rtx-executor:{self.job_id}")
        return self._db

    def _probe(self) -> None:
        connect(self.settings, f"rtx-executor-probe:{self.job_id}").close()

    def _with_db(self, work: Callable[[Gateway], T]) -> T:
        """``work`` in one transaction on rtx's own database (every statement it runs is idempotent).

        Raises DatabaseUnavailable at once while the outage gate is down, and closes the gate when
        the database cannot be reached. A session that died (server restart, a dropped connection)
        is replaced and ``work`` tried once more."""
        if self._gate.down:
            raise DatabaseUnavailable(self._gate.describe())
        for attempt in (1, 2):
            try:
                with self._database().transaction() as gw:
                    return work(gw)
            except DatabaseUnavailable as exc:
                self._gate.trip(redact_url(str(exc)))
                raise
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def sync(self) -> None:
        # Invariant: every state change reaches the scheduler at least once, and a second delivery
        # changes nothing. Read what is owed (marks nothing), push it to the event buffer, and only
        # then mark exactly the rows pushed, each guarded by the state pushed. A failure before the
        # mark (lost connection, an exception halfway) leaves the rows owed: the next sync delivers
        # them again. Again is harmless: change_state on a key no longer in ``running`` only logs,
        # the scheduler ignores a terminal event for a try it has already finished (its TI is no
        # longer QUEUED/RUNNING with that try number), and a callback's RUNNING only sets it again.
        if self._gate.down:
            return  # no wait on an unreachable database; outcomes stay owed in it until it is back
        self._flush_cancels()
        self._take_outcomes()
        self._emit_gauges()

    def _take_outcomes(self) -> None:
        """Read the outcomes owed, deliver them, mark those delivered (the invariant in ``sync``).
        Never raises; does nothing while the outage gate is down."""
        if self._gate.down:
            return
        self._outcomes_read_at = time.monotonic()

        def read(gw: Gateway) -> list[dict]:
            rows = gw.unreported_outcomes(self.job_id)
            if time.monotonic() - self._last_reconcile > RECONCILE_EVERY:
                self._reconcile(gw)
            return rows

        try:
            rows = self._with_db(read)
        except Exception as exc:  # noqa: BLE001 - the scheduler loop must survive a database hiccup
            self.log.warning("RuntimeExecutor.sync could not read outcomes: %s", redact_url(str(exc)))
            return
        delivered = [row for row in rows if self._deliver(row)]
        if delivered:
            ids, states = [str(row["id"]) for row in delivered], [row["state"] for row in delivered]
            try:
                marked = self._with_db(lambda gw: gw.mark_reported(ids, states, self.job_id))
            except Exception as exc:  # noqa: BLE001 - delivered already; they are delivered again next time
                self.log.warning(
                    "RuntimeExecutor.sync could not mark %d outcome(s) reported (they will be delivered again): %s",
                    len(delivered),
                    redact_url(str(exc)),
                )
            else:
                self._stats.completions(marked)  # counted once: only rows this call marked

    def _deliver(self, row: dict) -> bool:
        """Push one state change to the event buffer; False (not to be marked) if that failed."""
        try:
            key = _key_of(row)
            state = row["state"]
            if state == "running":  # a callback's start (a task's is not reported)
                self.running_state(key, str(row["id"]))
            elif state == "succeeded":
                self.success(key)
                self._allocation_ids.pop(key, None)
            else:  # failed, lost
                info = row["reason"] or f"allocation {row['id']} {state}"
                self.fail(key, info=f"rtx: {info}")
                self._allocation_ids.pop(key, None)
                self._failure_log.submit(row)  # never blocks or raises (failure_log.py)
        except Exception:  # noqa: BLE001 - left unreported: delivered again by the next sync
            self.log.exception(
                "RuntimeExecutor could not deliver the outcome of allocation %s", row.get("id")
            )
            return False
        return True

    def _emit_gauges(self) -> None:
        """rtx's capacity and queue gauges through Airflow's metrics: one query every ~10 s; never raises."""
        if self._gate.down or not self._stats.due():
            return
        try:
            row = self._with_db(lambda gw: gw.executor_metrics())
        except Exception as exc:  # noqa: BLE001 - metrics never fail sync()
            self.log.debug("RuntimeExecutor could not read metrics: %s", redact_url(str(exc)))
            return
        self._stats.gauges(row)

    def _reconcile(self, gw: Gateway) -> None:
        """Drop keys whose allocation vanished (e.g. the scheduler's transaction rolled back)."""
        self._last_reconcile = time.monotonic()
        tracked = gw.tracked_allocations(list(self._allocation_ids.values()))
        for key, allocation_id in list(self._allocation_ids.items()):
            if allocation_id not in tracked:
                self._allocation_ids.pop(key, None)
                self.running.discard(key)

    # -- revoke / adopt ---------------------------------------------------------------------------
    def revoke_task(self, *, ti: Any) -> None:
        """Cancel the allocation (a runner that already started it stops it). Never raises."""
        allocation_id = self._allocation_ids.pop(ti.key, None) or ti.external_executor_id
        self._unqueue(ti.key)  # one still waiting for rtx's database is now never written
        if _is_uuid(allocation_id):
            try:
                self._with_db(lambda gw: gw.cancel_allocations([str(allocation_id)]))
            except DatabaseUnavailable:
                # applied by the first sync once the database answers again
                self._pending_cancels.add(str(allocation_id))
                self.log.warning("RuntimeExecutor will revoke %s once rtx's database answers", ti.key)
            except Exception as exc:  # noqa: BLE001 - revoke_task must not raise
                self.log.warning("RuntimeExecutor could not revoke %s: %s", ti.key, redact_url(str(exc)))
        self.running.discard(ti.key)

    def _flush_cancels(self) -> None:
        if not self._pending_cancels:
            return
        ids = sorted(self._pending_cancels)
        try:
            self._with_db(lambda gw: gw.cancel_allocations(ids))
        except Exception as exc:  # noqa: BLE001 - kept for the next sync
            self.log.warning(
                "RuntimeExecutor could not apply %d revoke(s) yet: %s", len(ids), redact_url(str(exc))
            )
            return
        self._pending_cancels.difference_update(ids)

    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        # ids of other executors (e.g. Celery task ids) cannot be ours: they are simply not adopted
        by_id = {str(ti.external_executor_id): ti for ti in tis if _is_uuid(ti.external_executor_id)}
        if not by_id:
            return list(tis)
        try:
            rows = self._with_db(lambda gw: gw.adopt_allocations(list(by_id), self.job_id))
        except Exception as exc:  # noqa: BLE001 - not adopted means Airflow reschedules them
            self.log.warning("RuntimeExecutor could not adopt tasks: %s", redact_url(str(exc)))
            return list(tis)
        adopted = {str(row["id"]) for row in rows}
        for allocation_id in adopted:
            key = by_id[allocation_id].key
            self.running.add(key)
            self._allocation_ids[key] = allocation_id
        self.log.info("RuntimeExecutor adopted %d of %d task instances", len(adopted), len(tis))
        return [ti for ti in tis if str(ti.external_executor_id) not in adopted]


def _key_of(row: dict) -> Any:
    if row["kind"] == "callback":
        return compat.callback_key(row["callback_id"])
    return TaskInstanceKey(
        dag_id=row["dag_id"],
        task_id=row["task_id"],
        run_id=row["run_id"],
        try_number=row["try_number"],
        map_index=row["map_index"],
    )


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except (TypeError, ValueError):
        return False
    return value is not None


def _same_database(a: str, b: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    def norm(url: str) -> tuple:
        info = conninfo_to_dict(url)
        return (
            info.get("host") or "localhost",
            str(info.get("port") or 5432),
            info.get("dbname"),
            info.get("user"),
        )

    try:
        return norm(a) == norm(b)
    except Exception:  # noqa: BLE001
        return a == b
