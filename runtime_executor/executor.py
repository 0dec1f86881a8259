"""RuntimeExecutor: the shim the Airflow scheduler loads.

It only writes allocation requests into rtx's own schema and reads outcomes back; it never touches
Airflow's tables and never runs a task itself.

* ``queue_workload`` inserts one allocation per task (or callback) in the scheduler's own
  transaction when rtx shares Airflow's database, so the row exists exactly when the task instance
  is QUEUED. The allocation id is the external executor id the scheduler pre-assigned.
* ``sync`` reports every state change at least once (a second delivery changes nothing): it reads
  what is owed, pushes it to the event buffer, then marks those rows reported.
* A bad resource request is stored as a failed allocation with its reason, so the task fails at
  once with a message naming it and the value, and the scheduler carries on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.configuration import conf
from airflow.executors import workloads
from airflow.executors.base_executor import BaseExecutor
from airflow.models.callback import CallbackKey
from airflow.models.taskinstancekey import TaskInstanceKey

from runtime_executor.db.connection import Database, DatabaseUnavailable, connect
from runtime_executor.db.gateway import Gateway
from runtime_executor.db.migrate import SchemaMismatch, check_schema
from runtime_executor.metrics import ExecutorStats
from runtime_executor.resources import BadResourceRequest, ResourceRequest, request_from_task
from runtime_executor.settings import ConfigError, Settings, load_settings, redact_url, to_libpq_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

RECONCILE_EVERY = 60.0


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
        self._dag_resources: dict[tuple[str, str], Any] = {}
        self._last_reconcile = time.monotonic()
        self._stats = ExecutorStats(self.log)

    # -- start / stop -----------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                airflow_url = to_libpq_url(conf.get("database", "sql_alchemy_conn"))
            except ConfigError:
                airflow_url = ""  # Airflow on another database engine: rtx needs RTX_DATABASE_URL then
            settings = load_settings()
            if not settings.database_url:
                settings = settings.with_overrides(database_url=airflow_url)
            self._shares_airflow_db = bool(airflow_url) and _same_database(settings.database_url, airflow_url)
            self._settings = settings
        return self._settings

    def start(self) -> None:
        """Health check: fail loudly (and clearly) when rtx's database or schema is not usable."""
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
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeError(f"RuntimeExecutor cannot start: {redact_url(first_line)}") from None
        self._db = Database(settings, f"rtx-executor:{self.job_id}")
        self.log.info(
            "RuntimeExecutor started (schema %s, %s database)",
            settings.schema,
            "Airflow's" if self._shares_airflow_db else "a separate",
        )

    def end(self) -> None:
        self.sync()
        self.terminate()

    def terminate(self) -> None:
        if self._db is not None:
            self._db.close()

    # -- queueing ---------------------------------------------------------------------------------
    def queue_workload(self, workload: Any, session: Session) -> None:
        if isinstance(workload, workloads.ExecuteTask):
            self._queue_task(workload, session)
        elif isinstance(workload, workloads.ExecuteCallback):
            self._queue_callback(workload, session)
        else:
            super().queue_workload(workload, session)

    def _process_workloads(self, workloads_: Sequence[Any]) -> None:
        # Nothing to do: queue_workload already handed every workload to the allocator.
        return None

    def _queue_task(self, workload: Any, session: Session) -> None:
        ti = workload.ti
        key = ti.key
        allocation_id = str(ti.external_executor_id or uuid.uuid4())
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
        self._insert(
            session,
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
            reason=reason,
        )
        self.running.add(key)
        self._allocation_ids[key] = allocation_id

    def _queue_callback(self, workload: Any, session: Session) -> None:
        key = workload.key
        allocation_id = str(uuid.uuid4())
        self._insert(
            session,
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
            reason=None,
        )
        self.running.add(key)
        self._allocation_ids[key] = allocation_id

    def _insert(self, session: Session, **row: Any) -> None:
        if self._shares_airflow_db:
            # Same transaction as the task instance's QUEUED state: both commit or neither does.
            Gateway(session.connection().connection, self.settings.schema).insert_allocation(**row)
        else:
            with self._database().transaction() as gw:
                gw.insert_allocation(**row)

    def _airflow_resources(self, ti: Any) -> Any:
        """Airflow's own ``resources=`` of the task (not on the TI: read from the serialized DAG)."""
        if isinstance(ti.executor_config, dict) and "runtime" in ti.executor_config:
            return None
        cache_key = (str(ti.dag_version_id), ti.task_id)
        if cache_key not in self._dag_resources:
            resources = None
            try:
                from airflow.models.dagbag import DBDagBag
                from airflow.utils.session import create_session

                # Its own session: a failed lookup must not abort the scheduler's transaction, and
                # the scheduler forbids commits (even of a savepoint) on its own session here.
                with create_session(scoped=False) as own_session:
                    dag = DBDagBag().get_dag(ti.dag_version_id, session=own_session)
                    if dag is not None and dag.has_task(ti.task_id):
                        resources = getattr(dag.get_task(ti.task_id), "resources", None)
            except Exception:  # noqa: BLE001 - resources are optional; never fail queueing over them
                self.log.warning("could not read resources of %s.%s", ti.dag_id, ti.task_id, exc_info=True)
                return None  # not cached: the next task of this DAG version tries again
            if len(self._dag_resources) > 10000:
                self._dag_resources.clear()
            self._dag_resources[cache_key] = resources
        return self._dag_resources[cache_key]

    # -- outcomes ---------------------------------------------------------------------------------
    def _database(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings, f"rtx-executor:{self.job_id}")
        return self._db

    def sync(self) -> None:
        # Invariant: every state change reaches the scheduler at least once, and a second delivery
        # changes nothing. Read what is owed (marks nothing), push it to the event buffer, and only
        # then mark exactly the rows pushed, each guarded by the state pushed. A failure before the
        # mark (lost connection, an exception halfway) leaves the rows owed: the next sync delivers
        # them again. Again is harmless: change_state on a key no longer in ``running`` only logs,
        # the scheduler ignores a terminal event for a try it has already finished (its TI is no
        # longer QUEUED/RUNNING with that try number), and a RUNNING event only sets the id again.
        try:
            with self._database().transaction() as gw:
                rows = gw.unreported_outcomes(self.job_id)
                if time.monotonic() - self._last_reconcile > RECONCILE_EVERY:
                    self._reconcile(gw)
        except Exception as exc:  # noqa: BLE001 - the scheduler loop must survive a database hiccup
            self.log.warning("RuntimeExecutor.sync could not read outcomes: %s", redact_url(str(exc)))
            return
        delivered = [row for row in rows if self._deliver(row)]
        if delivered:
            try:
                with self._database().transaction() as gw:
                    marked = gw.mark_reported(
                        [str(row["id"]) for row in delivered], [row["state"] for row in delivered], self.job_id
                    )
            except Exception as exc:  # noqa: BLE001 - delivered already; they are delivered again next time
                self.log.warning(
                    "RuntimeExecutor.sync could not mark %d outcome(s) reported (they will be delivered again): %s",
                    len(delivered),
                    redact_url(str(exc)),
                )
            else:
                self._stats.completions(marked)  # counted once: only rows this call marked
        self._emit_gauges()

    def _deliver(self, row: dict) -> bool:
        """Push one state change to the event buffer; False (not to be marked) if that failed."""
        try:
            key = _key_of(row)
            state = row["state"]
            if state == "running":
                self.running_state(key, str(row["id"]))
            elif state == "succeeded":
                self.success(key)
                self._allocation_ids.pop(key, None)
            else:  # failed, lost
                info = row["reason"] or f"allocation {row['id']} {state}"
                self.fail(key, info=f"rtx: {info}")
                self._allocation_ids.pop(key, None)
        except Exception:  # noqa: BLE001 - left unreported: delivered again by the next sync
            self.log.exception("RuntimeExecutor could not deliver the outcome of allocation %s", row.get("id"))
            return False
        return True

    def _emit_gauges(self) -> None:
        """rtx's capacity and queue gauges through Airflow's metrics: one query every ~10 s; never raises."""
        if not self._stats.due():
            return
        try:
            with self._database().statements() as gw:
                row = gw.executor_metrics()
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
        try:
            if _is_uuid(allocation_id):
                with self._database().transaction() as gw:
                    gw.cancel_allocations([str(allocation_id)])
        except Exception as exc:  # noqa: BLE001 - revoke_task must not raise
            self.log.warning("RuntimeExecutor could not revoke %s: %s", ti.key, redact_url(str(exc)))
        self.running.discard(ti.key)
        self.queued_tasks.pop(ti.key, None)

    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        # ids of other executors (e.g. Celery task ids) cannot be ours: they are simply not adopted
        by_id = {str(ti.external_executor_id): ti for ti in tis if _is_uuid(ti.external_executor_id)}
        if not by_id:
            return list(tis)
        try:
            with self._database().transaction() as gw:
                rows = gw.adopt_allocations(list(by_id), self.job_id)
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
        return CallbackKey(id=row["callback_id"])
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
