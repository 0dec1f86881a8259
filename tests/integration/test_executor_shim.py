"""The RuntimeExecutor shim against a real database, without a scheduler.

Workloads are built by hand as the scheduler builds them; a SQLAlchemy session on the same database
plays the scheduler's session. The allocator's and runner's side is simulated on a registered runner
row: the Gateway's ``assign`` and ``finish_allocation``, and a state-guarded UPDATE for the start.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
import types

import pytest
from airflow.utils import state as airflow_state
from airflow.utils.state import TaskInstanceState
from sqlalchemy import text
from sqlalchemy.orm import Session

import runtime_executor.db.migrate as migrate_module
from runtime_executor import airflow_compat as compat
from runtime_executor.executor import RECONCILE_EVERY
from tests.integration.conftest import (
    TOKEN,
    UNREACHABLE_URL,
    callback_workload,
    cli_env,
    finish_on_runner,
    queue_in_session,
    register_runner,
    run_clis,
    sqlalchemy_url,
    start_on_runner,
    task_workload,
)

ExecuteTask, ExecuteCallback, CallbackKey = compat.ExecuteTask, compat.ExecuteCallback, compat.CallbackKey
CallbackState = getattr(airflow_state, "CallbackState", None)  # 3.2+

# Built as 3.2 and 3.3 build them (callbacks, an executor id the scheduler pre-assigned). On 3.1, which
# has neither, test_executor_compat.py and the e2e core path cover the shim.
pytestmark = pytest.mark.skipif(
    not (compat.HAS_CALLBACKS and compat.PRE_ASSIGNS_EXTERNAL_ID),
    reason=f"Airflow {compat.AIRFLOW_VERSION} has no callback workloads and no pre-assigned executor ids",
)

RUNTIME = {"runtime": {"cpu": 1.5, "memory": "1GiB", "slots": 2}}


def _events(executor) -> dict:
    return executor.get_event_buffer()


# -- start() ---------------------------------------------------------------------------------------


def test_start_migrates_an_empty_schema(make_executor, rtx):
    assert rtx.tables() == set()
    make_executor()
    assert {"allocations", "runners", "schema_migrations"} <= rtx.tables()
    assert rtx.versions() == [v for v, _, _ in migrate_module.migrations()]
    # a second start on the now current schema changes nothing
    make_executor(job_id=2)
    assert rtx.versions() == [v for v, _, _ in migrate_module.migrations()]


def test_constructor_is_cheap_and_start_fails_clearly_without_leaking_the_password(
    make_executor, monkeypatch
):
    url = sqlalchemy_url(UNREACHABLE_URL)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", url)
    executor = make_executor(start=False)  # no connection in __init__: the api-server builds executors too
    with pytest.raises(RuntimeError) as info:
        executor.start()
    message = str(info.value)
    assert "127.0.0.1" in message and "connect" in message
    assert "s3cretpw" not in message
    # nor anywhere in what the scheduler would log (chained exceptions included)
    assert "s3cretpw" not in "".join(traceback.format_exception(info.value))


def test_start_refuses_a_schema_newer_than_the_code(make_executor, rtx_db, rtx):
    rtx.rows("INSERT INTO {schema}.schema_migrations (version, name) VALUES (999, '0999_future.sql')")
    with pytest.raises(RuntimeError) as info:
        make_executor()
    assert "999" in str(info.value) and "newer" in str(info.value)


def test_start_refuses_a_schema_older_than_the_code_and_leaves_it_alone(
    make_executor, rtx_db, rtx, monkeypatch
):
    """The code gains migration N+1 while the database is at N: the operator must run `rtx db migrate`."""
    known = migrate_module.migrations()
    future = (
        known[-1][0] + 1,
        f"{known[-1][0] + 1:04d}_future.sql",
        "CREATE TABLE {schema}.should_not_exist (x int);",
    )
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*known, future])
    with pytest.raises(RuntimeError) as info:
        make_executor()
    assert "rtx db migrate" in str(info.value)
    assert str(known[-1][0]) in str(info.value)
    assert "should_not_exist" not in rtx.tables()
    assert rtx.versions() == [v for v, _, _ in known]


def test_start_with_tables_but_no_version_row_fails_clearly(make_executor, rtx_db, rtx):
    rtx.rows("DELETE FROM {schema}.schema_migrations")
    with pytest.raises(RuntimeError, match="rtx db migrate|version"):
        make_executor()


def test_start_with_own_postgres_while_airflow_is_on_mysql(make_executor, monkeypatch, rtx):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "mysql+mysqldb://af:pw@mysql.example/airflow")
    monkeypatch.setenv("RTX_DATABASE_URL", rtx.url)
    executor = make_executor()
    assert "allocations" in rtx.tables()
    assert executor._shares_airflow_db is False


# -- queue_workload --------------------------------------------------------------------------------


def test_queue_workload_inserts_one_allocation_in_the_schedulers_transaction(
    make_executor, engine, rtx_db, rtx
):
    executor = make_executor(job_id=11)
    workload = task_workload(
        dag_id="etl",
        task_id="load",
        map_index=3,
        try_number=2,
        queue="gpu",
        priority_weight=7,
        executor_config=RUNTIME,
    )
    allocation_id = workload.ti.external_executor_id

    with Session(engine) as session:
        executor.queue_workload(workload, session)
        # visible inside the scheduler's transaction, invisible outside it until the commit
        inside = session.execute(text(f'SELECT count(*) FROM "{rtx.schema}".allocations')).scalar()
        assert inside == 1
        assert rtx.allocation_count() == 0
        session.commit()

    row = rtx.allocation(allocation_id)
    assert row is not None and rtx.allocation_count() == 1
    assert str(row["id"]) == allocation_id
    assert (row["kind"], row["dag_id"], row["task_id"], row["run_id"]) == (
        "task",
        "etl",
        "load",
        workload.ti.run_id,
    )
    assert (row["map_index"], row["try_number"]) == (3, 2)
    assert (row["queue"], row["priority_weight"]) == ("gpu", 7)
    assert (row["slots"], row["cpu"], row["memory_mb"]) == (2, 1.5, 1024)
    assert row["state"] == "unassigned"
    assert row["scheduler_job_id"] == 11
    stored = ExecuteTask.model_validate_json(row["workload"])
    assert stored.ti.id == workload.ti.id
    assert stored.ti.key == workload.ti.key
    assert stored.token == TOKEN
    assert stored.dag_rel_path == workload.dag_rel_path
    assert workload.ti.key in executor.running
    # nothing to report yet
    executor.sync()
    assert _events(executor) == {}


def test_workload_json_holds_the_token_the_runner_needs(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME)
    assert TOKEN in workload.model_dump_json()
    queue_in_session(executor, engine, workload)
    assert json.loads(rtx.allocation(workload.ti.external_executor_id)["workload"])["token"] == TOKEN


def test_rolled_back_session_leaves_no_allocation(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME)
    queue_in_session(executor, engine, workload, commit=False)
    assert rtx.allocation_count() == 0
    assert rtx.allocation(workload.ti.external_executor_id) is None
    # the in-memory slot is given back at the next reconciliation
    assert workload.ti.key in executor.running
    executor._last_reconcile = time.monotonic() - RECONCILE_EVERY - 1
    executor.sync()
    assert workload.ti.key not in executor.running
    assert _events(executor) == {}


def test_workload_without_pre_assigned_id_still_gets_an_allocation(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME, external_executor_id=None)
    queue_in_session(executor, engine, workload)
    assert rtx.allocation_count() == 1
    assert workload.ti.key in executor.running


@pytest.mark.parametrize(
    ("runtime", "shown"),
    [
        ({"slots": 65}, "65"),
        ({"gpu": 1}, "gpu"),
        ({"memory": "lots"}, "lots"),
        ({"cpu": -2}, "-2"),
    ],
    ids=["slots-65", "unknown-key", "memory-lots", "negative-cpu"],
)
def test_bad_request_fails_the_task_once_with_a_clear_message(
    make_executor, engine, rtx_db, rtx, runtime, shown
):
    executor = make_executor()
    good = task_workload(task_id="good", executor_config=RUNTIME)
    bad = task_workload(dag_id="etl", task_id="greedy", executor_config={"runtime": runtime})
    queue_in_session(executor, engine, good, bad)  # never raises: the scheduler carries on

    row = rtx.allocation(bad.ti.external_executor_id)
    assert row["state"] == "failed"
    assert rtx.allocation(good.ti.external_executor_id)["state"] == "unassigned"

    executor.sync()
    events = _events(executor)
    assert list(events) == [bad.ti.key]
    state, info = events[bad.ti.key]
    assert state == TaskInstanceState.FAILED
    assert "etl.greedy" in info and shown in info
    assert bad.ti.key not in executor.running
    assert good.ti.key in executor.running

    logs = list(executor._task_event_logs)
    assert len(logs) == 1
    assert (logs[0].dag_id, logs[0].task_id, logs[0].try_number) == ("etl", "greedy", 1)
    assert shown in logs[0].extra

    executor.sync()
    assert _events(executor) == {}


@pytest.mark.parametrize(
    ("runtime", "shown"),
    [
        ({"memory": 10**20}, "memory="),
        ({"memory": "1e13TiB"}, "1e13TiB"),
        ({"slots": "²"}, "²"),
        # these raised OverflowError / ValueError out of queue_workload (issue 11, item 2)
        ({"memory": "1e308TiB"}, "1e308TiB"),
        ({"cpu": 10**400}, "cpu="),
        ({"memory": 10**400}, "memory="),
        ({"slots": "1" * 5000}, "slots="),
        ({10**5000: 1}, "unknown key"),
    ],
    ids=[
        "memory-1e20",
        "1e13TiB",
        "superscript",
        "1e308TiB",
        "cpu-1e400",
        "memory-1e400",
        "slots-digits",
        "huge-key",
    ],
)
def test_absurd_request_fails_the_task_instead_of_the_scheduler(
    make_executor, engine, rtx_db, runtime, shown
):
    executor = make_executor()
    good = task_workload(task_id="good", executor_config=RUNTIME)
    workload = task_workload(dag_id="etl", task_id="absurd", executor_config={"runtime": runtime})
    queue_in_session(executor, engine, workload, good)  # never raises: the scheduler carries on
    executor.sync()
    events = _events(executor)
    assert list(events) == [workload.ti.key]
    state, info = events[workload.ti.key]
    assert state == TaskInstanceState.FAILED
    assert "etl.absurd" in info and shown in info
    assert len(info) < 2000


def test_any_exception_from_parsing_fails_only_that_task(make_executor, engine, rtx_db, rtx, monkeypatch):
    """Defence in depth: even a parser bug (an exception other than BadResourceRequest) fails only its task."""
    import runtime_executor.executor as executor_module

    real = executor_module.request_from_task

    def broken(executor_config, airflow_resources=None):
        if executor_config == {"runtime": {"cpu": "boom"}}:
            raise ZeroDivisionError("parser bug")
        return real(executor_config, airflow_resources)

    monkeypatch.setattr(executor_module, "request_from_task", broken)
    executor = make_executor()
    bad = task_workload(dag_id="etl", task_id="buggy", executor_config={"runtime": {"cpu": "boom"}})
    good = task_workload(task_id="good", executor_config=RUNTIME)
    queue_in_session(executor, engine, bad, good)
    assert rtx.allocation(bad.ti.external_executor_id)["state"] == "failed"
    assert rtx.allocation(good.ti.external_executor_id)["state"] == "unassigned"
    executor.sync()
    state, info = _events(executor)[bad.ti.key]
    assert state == TaskInstanceState.FAILED
    assert "etl.buggy" in info and "ZeroDivisionError" in info and "parser bug" in info


def test_failed_resources_lookup_does_not_poison_the_schedulers_transaction(
    make_executor, engine, rtx_db, rtx
):
    executor = make_executor()
    workload = task_workload(executor_config=None)  # no runtime section: Airflow resources= are looked up
    queue_in_session(executor, engine, workload)
    row = rtx.allocation(workload.ti.external_executor_id)
    assert (row["slots"], row["cpu"], row["memory_mb"]) == (1, 0.0, 0)


def test_airflow_resources_are_read_once_per_dag_version(make_executor, engine, rtx_db, rtx, monkeypatch):
    """A wide DAG must not cost the scheduler one DAG deserialization per task (O(tasks²) a run).

    This test's Airflow database has no DAGs, so the lookup answers "no such version" (as Airflow's
    would for a DAG without resources=); the real lookup runs in the e2e core path's resources= task."""
    import runtime_executor.executor as executor_module

    reads: list[str] = []

    def counted(dag_version_id, session):
        reads.append(str(dag_version_id))
        return None

    monkeypatch.setattr(executor_module.compat, "dag_of_version", counted)
    executor = make_executor()
    workloads = [task_workload(task_id=f"t{i}", executor_config=None) for i in range(5)]
    for workload in workloads[1:]:
        workload.ti.dag_version_id = workloads[0].ti.dag_version_id
    other_version = task_workload(task_id="t0", executor_config=None)
    for workload in [*workloads, other_version]:
        queue_in_session(executor, engine, workload)
    assert reads == [str(workloads[0].ti.dag_version_id), str(other_version.ti.dag_version_id)]
    assert all(rtx.allocation(w.ti.external_executor_id)["slots"] == 1 for w in [*workloads, other_version])


# -- sync(): every state once ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("final", "exit_code", "reason", "expected"),
    [
        ("succeeded", 0, None, TaskInstanceState.SUCCESS),
        ("failed", 3, "task process exited with code 3", TaskInstanceState.FAILED),
    ],
)
def test_runner_progress_is_reported_exactly_once(
    make_executor, engine, rtx_db, rtx, final, exit_code, reason, expected
):
    executor = make_executor(job_id=5)
    workload = task_workload(executor_config=RUNTIME)
    allocation_id = workload.ti.external_executor_id
    key = workload.ti.key
    queue_in_session(executor, engine, workload)
    runner_id = register_runner(rtx_db)

    start_on_runner(rtx_db, allocation_id, runner_id)
    executor.sync()
    # a start is not an event (the task reports RUNNING to Airflow itself), and stays owed nothing
    assert _events(executor) == {}
    assert key in executor.running
    assert rtx.allocation(allocation_id)["reported_state"] is None

    assert finish_on_runner(rtx_db, allocation_id, runner_id, final, exit_code, reason) == final
    executor.sync()
    events = _events(executor)
    assert list(events) == [key]
    assert events[key][0] == expected
    if reason:
        assert reason in events[key][1]
    assert key not in executor.running
    executor.sync()
    assert _events(executor) == {}


# -- sync(): at least once, and a second delivery changes nothing (issue 11, item 7) --------------


def _finished_task(executor, engine, rtx_db, state: str = "succeeded", task_id: str = "task"):
    workload = task_workload(task_id=task_id, executor_config=RUNTIME)
    queue_in_session(executor, engine, workload)
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, workload.ti.external_executor_id, runner_id)
    finish_on_runner(
        rtx_db, workload.ti.external_executor_id, runner_id, state, 0 if state == "succeeded" else 1
    )
    return workload


def test_an_exception_halfway_through_sync_loses_no_outcome(make_executor, engine, rtx_db, rtx, monkeypatch):
    executor = make_executor()
    first = _finished_task(executor, engine, rtx_db, task_id="first")
    second = _finished_task(executor, engine, rtx_db, task_id="second")
    real_success = executor.success
    calls = []

    def success_failing_once(key, info=None):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("the scheduler's side broke halfway")
        real_success(key, info)

    monkeypatch.setattr(executor, "success", success_failing_once)
    delivered = {}
    with contextlib.suppress(RuntimeError):  # (it used to escape sync())
        executor.sync()
    delivered.update(_events(executor))
    executor.sync()  # whichever one broke is delivered now
    delivered.update(_events(executor))
    assert set(delivered) == {first.ti.key, second.ti.key}
    assert {state for state, _ in delivered.values()} == {TaskInstanceState.SUCCESS}
    rows = rtx.rows("SELECT reported_state FROM {schema}.allocations")
    assert [r["reported_state"] for r in rows] == ["succeeded", "succeeded"]
    executor.sync()
    assert _events(executor) == {}


def _install_trigger(rtx, body: str) -> None:
    rtx.rows(
        "CREATE FUNCTION {schema}.break_marking() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN {body}; RETURN NEW; END $$"
    )
    rtx.rows(
        "CREATE TRIGGER break_marking BEFORE UPDATE OF reported_state ON {schema}.allocations"
        " FOR EACH ROW WHEN (NEW.reported_state IN ('succeeded', 'failed', 'lost'))"
        " EXECUTE FUNCTION {schema}.break_marking()"
    )


@pytest.mark.parametrize(
    "failure",
    [
        # the executor's own backend is terminated in the middle of marking (a real connection loss)
        "PERFORM pg_terminate_backend(pg_backend_pid())",
        # or the statement that marks fails with an error
        "RAISE EXCEPTION 'marking refused'",
    ],
    ids=["backend-terminated", "statement-error"],
)
def test_outcome_is_delivered_even_when_marking_it_reported_fails(
    make_executor, engine, rtx_db, rtx, failure
):
    executor = make_executor()
    workload = _finished_task(executor, engine, rtx_db, "failed")
    key = workload.ti.key
    _install_trigger(rtx, failure)

    executor.sync()  # reads the outcome, delivers it, then fails to mark it reported
    events = _events(executor)
    assert list(events) == [key]
    assert events[key][0] == TaskInstanceState.FAILED
    assert key not in executor.running
    assert rtx.allocation(workload.ti.external_executor_id)["reported_state"] is None

    rtx.rows("DROP TRIGGER break_marking ON {schema}.allocations")
    # delivered again (the scheduler ignores a second FAILED for a try it has handled): harmless
    executor.sync()
    events = _events(executor)
    assert list(events) == [key]
    assert events[key][0] == TaskInstanceState.FAILED
    assert key not in executor.running
    assert rtx.allocation(workload.ti.external_executor_id)["reported_state"] == "failed"
    executor.sync()
    assert _events(executor) == {}


def test_marking_is_guarded_by_the_reported_state(make_executor, engine, rtx_db, rtx):
    """A row that moved on between the read and the mark (a callback's running -> succeeded) is not
    marked with its new state: the new state is delivered by the next sync."""
    executor = make_executor()
    workload = callback_workload()
    queue_in_session(executor, engine, workload)
    (allocation,) = rtx.rows("SELECT id FROM {schema}.allocations")
    allocation_id = str(allocation["id"])
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, allocation_id, runner_id)
    with rtx_db.transaction() as gw:
        (row,) = gw.unreported_outcomes(executor.job_id)
        assert row["state"] == "running"
    finish_on_runner(rtx_db, allocation_id, runner_id, "succeeded")
    with rtx_db.transaction() as gw:
        assert gw.mark_reported([str(row["id"])], ["running"], executor.job_id) == []
    assert rtx.allocation(allocation_id)["reported_state"] is None
    executor.sync()
    assert _events(executor)[compat.workload_key(workload)][0] == CallbackState.SUCCESS
    assert rtx.allocation(allocation_id)["reported_state"] == "succeeded"


def test_a_started_task_is_not_reported_a_started_callback_is(make_executor, engine, rtx_db, rtx):
    """Only outcomes of tasks reach the scheduler: a RUNNING event would cost it a locked read of the
    task instances and keep its loop awake (docs/performance.md). A callback's start sets its state."""
    executor = make_executor()
    task, callback = task_workload(executor_config=RUNTIME), callback_workload()
    queue_in_session(executor, engine, task, callback)
    runner_id = register_runner(rtx_db)
    ids = {r["kind"]: str(r["id"]) for r in rtx.rows("SELECT id, kind FROM {schema}.allocations")}
    for allocation_id in ids.values():
        start_on_runner(rtx_db, allocation_id, runner_id)
    executor.sync()
    assert _events(executor) == {compat.workload_key(callback): (CallbackState.RUNNING, ids["callback"])}
    assert {
        r["kind"]: r["reported_state"]
        for r in rtx.rows("SELECT kind, reported_state FROM {schema}.allocations")
    } == {
        "task": None,
        "callback": "running",
    }
    finish_on_runner(rtx_db, ids["task"], runner_id, "succeeded")
    executor.sync()
    assert _events(executor) == {task.ti.key: (TaskInstanceState.SUCCESS, None)}


def test_lost_allocation_is_reported_failed_once(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME)
    queue_in_session(executor, engine, workload)
    start_on_runner(rtx_db, workload.ti.external_executor_id, register_runner(rtx_db))
    rtx.rows(
        "UPDATE {schema}.allocations SET state = 'lost', reason = 'runner r1 stopped heartbeating' WHERE id = %s",
        (workload.ti.external_executor_id,),
    )
    executor.sync()
    events = _events(executor)
    # RUNNING was never seen by this executor; it goes straight to the terminal state
    assert list(events) == [workload.ti.key]
    assert events[workload.ti.key][0] == TaskInstanceState.FAILED
    assert "stopped heartbeating" in events[workload.ti.key][1]
    executor.sync()
    assert _events(executor) == {}


def test_outcomes_go_only_to_the_executor_that_queued_them(make_executor, engine, rtx_db):
    mine, other = make_executor(job_id=1), make_executor(job_id=2)
    workload = task_workload(executor_config=RUNTIME)
    queue_in_session(mine, engine, workload)
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, workload.ti.external_executor_id, runner_id)
    finish_on_runner(rtx_db, workload.ti.external_executor_id, runner_id, "succeeded")
    other.sync()
    assert _events(other) == {}
    mine.sync()
    assert _events(mine)[workload.ti.key][0] == TaskInstanceState.SUCCESS


def test_sync_never_raises_when_the_database_is_unreachable(make_executor, monkeypatch):
    url = sqlalchemy_url(UNREACHABLE_URL)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
    executor = make_executor(start=False)
    executor.sync()  # logs a warning, never raises into the scheduler loop
    assert _events(executor) == {}


# -- revoke_task -----------------------------------------------------------------------------------


def test_revoke_unassigned_cancels_and_reports_nothing(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME)
    queue_in_session(executor, engine, workload)
    executor.revoke_task(ti=workload.ti)
    row = rtx.allocation(workload.ti.external_executor_id)
    assert row["state"] == "cancelled"
    assert workload.ti.key not in executor.running
    executor.sync()
    assert _events(executor) == {}


def test_revoke_finds_the_allocation_without_a_pre_assigned_id(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME, external_executor_id=None)
    queue_in_session(executor, engine, workload)
    executor.revoke_task(ti=workload.ti)
    assert rtx.rows("SELECT state FROM {schema}.allocations") == [{"state": "cancelled"}]


def test_revoke_running_requests_cancel_and_reports_nothing(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME)
    allocation_id = workload.ti.external_executor_id
    queue_in_session(executor, engine, workload)
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, allocation_id, runner_id)
    executor.sync()
    assert _events(executor) == {}

    executor.revoke_task(ti=workload.ti)
    row = rtx.allocation(allocation_id)
    assert row["state"] == "running" and row["cancel_requested"] is True
    assert workload.ti.key not in executor.running
    executor.sync()
    assert _events(executor) == {}
    # the runner stops it; the outcome is not reported either (revoke_task must emit no event)
    assert finish_on_runner(rtx_db, allocation_id, runner_id, "failed", -15, "stopped") == "cancelled"
    executor.sync()
    assert _events(executor) == {}


def test_revoke_never_raises_with_the_database_down(make_executor, monkeypatch):
    url = sqlalchemy_url(UNREACHABLE_URL)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
    executor = make_executor(start=False)
    workload = task_workload(executor_config=RUNTIME)
    executor.running.add(workload.ti.key)
    executor._allocation_ids[workload.ti.key] = workload.ti.external_executor_id
    executor.revoke_task(ti=workload.ti)
    assert workload.ti.key not in executor.running
    # an unknown TI without any id is fine too
    executor.revoke_task(ti=types.SimpleNamespace(key=task_workload().ti.key, external_executor_id=None))


# -- try_adopt_task_instances ----------------------------------------------------------------------


def _loaded_ti(workload, external_executor_id: str | None = ...):
    """What the scheduler hands over: TIs loaded with id, dag_id, task_id, run_id, map_index, state, external_executor_id."""
    ti = workload.ti
    return types.SimpleNamespace(
        id=ti.id,
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_index=ti.map_index,
        try_number=ti.try_number,
        state="queued",
        external_executor_id=ti.external_executor_id if external_executor_id is ... else external_executor_id,
        key=ti.key,
    )


def test_new_executor_adopts_what_it_finds_and_returns_the_rest(make_executor, engine, rtx_db, rtx):
    old = make_executor(job_id=1)
    waiting = task_workload(task_id="waiting", executor_config=RUNTIME)
    running = task_workload(task_id="running", executor_config=RUNTIME)
    finished = task_workload(task_id="finished", executor_config=RUNTIME)
    revoked = task_workload(task_id="revoked", executor_config=RUNTIME)
    queue_in_session(old, engine, waiting, running, finished, revoked)
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, running.ti.external_executor_id, runner_id)
    start_on_runner(rtx_db, finished.ti.external_executor_id, runner_id)
    finish_on_runner(rtx_db, finished.ti.external_executor_id, runner_id, "succeeded")
    old.revoke_task(ti=revoked.ti)
    old.sync()
    assert _events(old)[finished.ti.key][0] == TaskInstanceState.SUCCESS  # reported to the old scheduler

    never_queued = task_workload(task_id="never_queued", executor_config=RUNTIME)
    tis = [
        _loaded_ti(waiting),
        _loaded_ti(running),
        _loaded_ti(finished),
        _loaded_ti(revoked),
        _loaded_ti(never_queued),
        _loaded_ti(task_workload(task_id="no_id"), external_executor_id=None),
    ]
    new = make_executor(job_id=2)
    not_adopted = new.try_adopt_task_instances(tis)

    assert {ti.task_id for ti in not_adopted} == {"revoked", "never_queued", "no_id"}
    assert {waiting.ti.key, running.ti.key, finished.ti.key} <= new.running
    assert revoked.ti.key not in new.running
    for w in (waiting, running, finished):
        assert rtx.allocation(w.ti.external_executor_id)["scheduler_job_id"] == 2

    # the finished one is reported again, to the new executor; the running one is not re-announced
    new.sync()
    events = _events(new)
    assert list(events) == [finished.ti.key]
    assert events[finished.ti.key][0] == TaskInstanceState.SUCCESS
    new.sync()
    assert _events(new) == {}

    # from now on outcomes go to the new executor only
    finish_on_runner(rtx_db, running.ti.external_executor_id, runner_id, "succeeded")
    old.sync()
    assert _events(old) == {}
    new.sync()
    assert _events(new) == {running.ti.key: (TaskInstanceState.SUCCESS, None)}


def test_adopting_nothing_returns_everything(make_executor, rtx_db):
    new = make_executor(job_id=3)
    tis = [_loaded_ti(task_workload(task_id=f"t{i}")) for i in range(3)]
    assert {ti.task_id for ti in new.try_adopt_task_instances(tis)} == {"t0", "t1", "t2"}
    assert new.running == set()


def test_one_foreign_executor_id_does_not_block_adoption_of_the_others(make_executor, engine, rtx_db):
    old = make_executor(job_id=1)
    ours = task_workload(task_id="ours", executor_config=RUNTIME)
    queue_in_session(old, engine, ours)
    foreign = _loaded_ti(task_workload(task_id="foreign"), external_executor_id="celery-task-42")
    new = make_executor(job_id=2)
    not_adopted = new.try_adopt_task_instances([_loaded_ti(ours), foreign])
    assert [ti.task_id for ti in not_adopted] == ["foreign"]
    assert ours.ti.key in new.running


# -- callbacks -------------------------------------------------------------------------------------


def test_callback_workload_is_queued_and_its_outcome_reported_with_a_callback_key(
    make_executor, engine, rtx_db, rtx
):
    executor = make_executor()
    assert executor.supports_callbacks is True
    workload = callback_workload()
    key = compat.workload_key(workload)
    assert isinstance(key, CallbackKey)
    queue_in_session(executor, engine, workload)  # must not raise NotImplementedError
    assert key in executor.running

    rows = rtx.rows("SELECT id, kind, callback_id, state, workload FROM {schema}.allocations")
    assert len(rows) == 1
    row = rows[0]
    allocation_id = str(row["id"])
    assert (row["kind"], row["callback_id"], row["state"]) == ("callback", workload.callback.id, "unassigned")
    assert ExecuteCallback.model_validate_json(row["workload"]).callback.id == workload.callback.id

    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, allocation_id, runner_id)
    executor.sync()
    assert _events(executor) == {
        compat.callback_key(workload.callback.id): (CallbackState.RUNNING, allocation_id)
    }
    finish_on_runner(rtx_db, allocation_id, runner_id, "succeeded")
    executor.sync()
    events = _events(executor)
    assert list(events) == [key]
    assert events[key][0] == CallbackState.SUCCESS
    assert key not in executor.running
    executor.sync()
    assert _events(executor) == {}


def test_failed_callback_is_reported_failed(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    workload = callback_workload()
    queue_in_session(executor, engine, workload)
    allocation_id = str(rtx.rows("SELECT id FROM {schema}.allocations")[0]["id"])
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, allocation_id, runner_id)
    finish_on_runner(rtx_db, allocation_id, runner_id, "failed", 1, "callback raised")
    executor.sync()
    events = _events(executor)
    assert events[compat.workload_key(workload)][0] == CallbackState.FAILED
    assert "callback raised" in events[compat.workload_key(workload)][1]


# -- no secrets in the status --------------------------------------------------------------------


def test_status_never_shows_the_token(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    waiting = task_workload(task_id="waiting", executor_config=RUNTIME)
    running = task_workload(task_id="running", executor_config=RUNTIME)
    queue_in_session(executor, engine, waiting, running, callback_workload())
    start_on_runner(rtx_db, running.ti.external_executor_id, register_runner(rtx_db))
    assert TOKEN in rtx.allocation(waiting.ti.external_executor_id)["workload"]

    env = cli_env(rtx.url, RTX_SCHEMA=rtx.schema)
    as_json, as_text = run_clis(
        [(["runtime_executor", "status", "--json"], env), (["runtime_executor", "status"], env)]
    )
    assert as_json.returncode == 0, as_json.stderr
    assert as_text.returncode == 0, as_text.stderr
    snapshot = json.loads(as_json.stdout)
    listed = {a["id"] for a in snapshot["unassigned"]} | {
        a["id"] for r in snapshot["runners"] for a in r["allocations"]
    }
    assert {waiting.ti.external_executor_id, running.ti.external_executor_id} <= listed
    for output in (as_json.stdout, as_json.stderr, as_text.stdout, as_text.stderr):
        assert TOKEN not in output
    assert "waiting" in as_text.stdout and "running" in as_text.stdout


def test_unique_allocation_per_external_id(make_executor, engine, rtx_db, rtx):
    """The same workload queued twice (e.g. a retried scheduler loop) leaves one allocation."""
    executor = make_executor()
    workload = task_workload(executor_config=RUNTIME)
    queue_in_session(executor, engine, workload)
    queue_in_session(executor, engine, workload)
    assert rtx.allocation_count() == 1


# -- parallelism and queue_ahead --------------------------------------------------------------------


@pytest.mark.parametrize(("queue_ahead", "ahead"), [(None, 0), ("-1", 3), ("5", 5)])
def test_the_scheduler_may_queue_ahead_and_each_row_carries_the_parallelism(
    make_executor, engine, rtx, monkeypatch, queue_ahead, ahead
):
    """slots_occupied leaves out queue_ahead of the workloads handed over (default none, -1: as
    many as parallelism); the allocator holds the parallelism itself, from each row's max_running."""
    if queue_ahead is not None:
        monkeypatch.setenv("RTX_QUEUE_AHEAD", queue_ahead)
    executor = make_executor(parallelism=3)
    for i in range(8):
        queue_in_session(executor, engine, task_workload(task_id=f"t{i}", executor_config=RUNTIME))
        in_flight = i + 1
        assert executor.slots_occupied == max(0, in_flight - ahead)
        assert executor.slots_available == 3 - max(0, in_flight - ahead)
    assert {r["max_running"] for r in rtx.rows("SELECT max_running FROM {schema}.allocations")} == {3}


def test_slots_occupied_frees_the_slot_of_a_task_finished_since_the_last_sync(
    make_executor, engine, rtx_db, rtx, monkeypatch
):
    """The scheduler reads slots_occupied right before it queues, a loop before its next heartbeat:
    an outcome written since the last sync() frees its slot there, is delivered once, and is not
    delivered again by the sync() that follows; reads closer together than OUTCOMES_FRESH_S query
    nothing."""
    import runtime_executor.executor as executor_module

    executor = make_executor(parallelism=4)
    first = _finished_task(executor, engine, rtx_db, task_id="first")
    still_running = task_workload(task_id="running", executor_config=RUNTIME)
    queue_in_session(executor, engine, still_running)
    assert len(executor.running) == 2

    assert executor.slots_occupied == 1  # no sync(): the finished task's slot is free already
    assert first.ti.key not in executor.running and still_running.ti.key in executor.running
    events = _events(executor)
    assert list(events) == [first.ti.key] and events[first.ti.key][0] == TaskInstanceState.SUCCESS
    assert rtx.allocation(first.ti.external_executor_id)["reported_state"] == "succeeded"
    executor.sync()
    assert _events(executor) == {}  # delivered once

    monkeypatch.setattr(executor_module, "OUTCOMES_FRESH_S", 3600.0)
    second = _finished_task(executor, engine, rtx_db, task_id="second")
    executor.slots_occupied  # noqa: B018 - a read: outcomes were read less than OUTCOMES_FRESH_S ago
    assert second.ti.key in executor.running
    executor.sync()  # the heartbeat's read is not rate-limited
    assert list(_events(executor)) == [second.ti.key]
    assert second.ti.key not in executor.running


def test_slots_occupied_of_an_executor_never_started_touches_no_database(make_executor, monkeypatch):
    """The api-server builds executors too and never starts them: slots_occupied stays arithmetic."""
    url = sqlalchemy_url(UNREACHABLE_URL)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
    executor = make_executor(start=False, parallelism=4)
    assert executor.slots_occupied == 0 and executor.slots_available == 4
    assert executor._db is None  # no connection made (a read of outcomes would have opened one)
