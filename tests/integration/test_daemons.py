"""Allocator and runners as real processes against a real Postgres (tasks are tests.support.fake_task)."""

from __future__ import annotations

import json
import re

import psutil

from testing.daemons import query, wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import (
    FAST,
    assert_never_overcommitted,
    read_records,
    states,
    wait_runners,
    wait_states,
)

DONE = {"succeeded", "failed", "lost", "cancelled"}


def test_every_allocation_runs_once_with_its_ids_in_the_environment(db, daemons, tmp_path):
    record, env_dump = tmp_path / "record.txt", tmp_path / "env.json"
    daemons.allocator(**FAST)
    daemons.runner("--slots", "4", name="r1", **FAST)
    daemons.runner("--slots", "4", name="r2", **FAST)
    runner_ids = set(wait_runners(daemons.db_url, 2))
    ids = insert_allocations(db, 20, workload={"sleep": 0.1, "record": str(record)})
    probe = insert_allocations(db, 1, workload={"env_dump": str(env_dump)})
    assert set(wait_states(daemons.db_url, ids + probe, DONE).values()) == {"succeeded"}

    starts = [r for r in read_records(record) if r[0] == "start"]
    assert sorted(r[1] for r in starts) == sorted(ids)  # each exactly once
    assert {r[2] for r in starts} <= runner_ids
    env = json.loads(env_dump.read_text())
    assert env["RTX_ALLOCATION_ID"] == probe[0]
    assert env["RTX_RUNNER_ID"] in runner_ids
    assert "RTX_DATABASE_URL" not in env  # the runner's database URL never reaches a task
    assert_never_overcommitted(daemons.db_url)


def test_resources_limit_what_runs_at_once_on_a_runner(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    daemons.allocator(**FAST)
    daemons.runner("--slots", "8", "--cpu", "4", "--memory", "1000", name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    # memory allows two at a time, although slots and cpu would allow more
    ids = insert_allocations(db, 6, workload={"sleep": 0.6, "record": str(record)}, memory_mb=400, cpu=0.5)
    assert set(wait_states(daemons.db_url, ids, DONE, timeout=60).values()) == {"succeeded"}
    events = sorted((at, +1 if what == "start" else -1) for what, *_rest, at in read_records(record))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2
    assert_never_overcommitted(daemons.db_url)


def test_failing_task_is_reported_with_its_exit_code(db, daemons):
    daemons.allocator(**FAST)
    daemons.runner(name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    [failing] = insert_allocations(db, 1, workload={"exit": 3})
    [ok] = insert_allocations(db, 1, workload={})
    assert wait_states(daemons.db_url, [failing, ok], DONE) == {failing: "failed", ok: "succeeded"}
    with db.transaction() as gw:
        reason = gw.conn.execute(
            "SELECT reason, exit_code FROM runtime_executor.allocations WHERE id = %s", [failing]
        ).fetchone()
    assert reason == ("task process exited with code 3", 3)


def test_exit_codes_are_exact_while_spares_are_forked(db, daemons):
    """Every launch forks a new spare, and Process.start() polls all children, while the reaper
    reads exit codes: they must still be exact. (CI once saw code 255 from that race; it is rare,
    so this is a check that the codes stay exact, not a reliable reproduction.)"""
    daemons.allocator(**FAST)
    daemons.runner("--slots", "16", name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    ids = insert_allocations(db, 120, workload={"exit": 3})
    assert set(wait_states(daemons.db_url, ids, DONE, timeout=120).values()) == {"failed"}
    codes = query(
        daemons.db_url,
        "SELECT exit_code, count(*) FROM runtime_executor.allocations WHERE id = ANY(%(i)s::uuid[]) GROUP BY 1",
        {"i": ids},
    )
    assert codes == [(3, 120)]


def test_both_strategies_place_work(db, daemons):
    for strategy in ("MaxPackingStrategy", "EvenSpreadStrategy"):
        daemons.allocator(name=f"allocator-{strategy}", ALLOCATOR_STRATEGY=strategy, **FAST)
    daemons.runner("--slots", "2", name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    ids = insert_allocations(db, 6, workload={"sleep": 0.05})
    assert set(wait_states(daemons.db_url, ids, DONE).values()) == {"succeeded"}


def test_sigterm_drains_the_runner(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    daemons.allocator(**FAST)
    runner = daemons.runner("--slots", "1", name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    [running] = insert_allocations(db, 1, workload={"sleep": 2, "record": str(record)})
    wait_states(daemons.db_url, [running], {"running"})
    queued = insert_allocations(db, 2, workload={"record": str(record)})  # wait: the only slot is taken
    runner.send(15)  # SIGTERM
    assert runner.proc.wait(30) == 0
    # the running task finished and was reported; the others were never started and stay in the pool
    assert states(daemons.db_url, [running]) == {running: "succeeded"}
    assert set(states(daemons.db_url, queued).values()) == {"unassigned"}
    assert [r[1] for r in read_records(record) if r[0] == "start"] == [running]
    # a new runner picks the rest up
    daemons.runner("--slots", "1", name="r2", **FAST)
    assert set(wait_states(daemons.db_url, queued, DONE).values()) == {"succeeded"}


def test_workload_token_never_in_argv_or_logs_and_cleared_when_done(db, daemons, tmp_path):
    secret = "tok-" + "7" * 40
    record = tmp_path / "record.txt"
    daemons.allocator(**FAST)
    runner = daemons.runner(name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    [allocation] = insert_allocations(db, 1, workload={"sleep": 1.5, "record": str(record), "token": secret})
    wait_for(lambda: any(r[0] == "start" for r in read_records(record)), 20, what="the task to start")
    for proc in psutil.process_iter(["cmdline"]):  # while the task runs
        assert secret not in " ".join(proc.info["cmdline"] or []), proc.pid
    assert wait_states(daemons.db_url, [allocation], DONE) == {allocation: "succeeded"}
    [(workload,)] = query(
        daemons.db_url,
        "SELECT workload FROM runtime_executor.allocations WHERE id = %(a)s",
        {"a": allocation},
    )
    assert workload is None  # cleared once terminal
    assert secret not in runner.log()


# Every variable that carries rtx's or Airflow's metadata database credentials (issue 11, item 9).
DATABASE_CREDENTIAL_ENV = {
    "AIRFLOW__RUNTIME_EXECUTOR__DATABASE_URL": "postgresql://rtx:pw-rtx@db/rtx",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg://airflow:pw-af@db/airflow",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": "echo postgresql://airflow:pw-cmd@db/airflow",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET": "airflow/sql_alchemy_conn",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": "postgresql+asyncpg://airflow:pw-async@db/airflow",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC_CMD": "echo postgresql+asyncpg://airflow:pw-async@db/airflow",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC_SECRET": "airflow/sql_alchemy_conn_async",
    "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "postgresql://airflow:pw-core@db/airflow",
    "PGPASSWORD": "pw-libpq",
}


def test_no_database_credentials_reach_a_task_unless_allowed(db, daemons, tmp_path):
    """A task process gets none of the variables that carry rtx's or Airflow's metadata database
    credentials (Airflow 3 tasks use the Execution API), except those the operator allows by name;
    the DAGs' own connections (AIRFLOW_CONN_*) are left alone. Read from the task's /proc environ,
    what it was started with."""
    env_dump, proc_env_dump = tmp_path / "env.json", tmp_path / "proc_env.json"
    daemons.allocator(**FAST)
    daemons.runner(
        name="r1",
        RTX_TASK_ENV_ALLOW="AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
        AIRFLOW_CONN_WAREHOUSE="postgresql://dag:dagpw@warehouse/dw",
        **DATABASE_CREDENTIAL_ENV,
        **FAST,
    )
    wait_runners(daemons.db_url, 1)
    [probe] = insert_allocations(
        db, 1, workload={"env_dump": str(env_dump), "proc_env_dump": str(proc_env_dump)}
    )
    assert wait_states(daemons.db_url, [probe], DONE) == {probe: "succeeded"}
    env, started_with = json.loads(env_dump.read_text()), json.loads(proc_env_dump.read_text())
    assert env["RTX_ALLOCATION_ID"] == probe
    for seen in (env, started_with):  # a forked process's /proc environ is its fork server's
        leaked = sorted(name for name in [*DATABASE_CREDENTIAL_ENV, "RTX_DATABASE_URL"] if name in seen)
        assert leaked == ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"]  # the one allowed
        assert seen["AIRFLOW_CONN_WAREHOUSE"] == "postgresql://dag:dagpw@warehouse/dw"
        assert not any(  # a password of DATABASE_CREDENTIAL_ENV (not "pw-" inside a container name)
            re.search(r"(^|[:\s])pw-", value)
            for name, value in seen.items()
            if name != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"
        )
