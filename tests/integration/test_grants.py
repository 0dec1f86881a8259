"""`rtx db grant`: each component's role can do its job and nothing more (real roles, real logins)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest

from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings
from runtime_executor.status import snapshot
from testing.daemons import daemon_env
from tests.support.allocations import assign_to, insert_allocations
from tests.support.fixtures import wait_states


@pytest.fixture
def login(db_url):
    name = f"rtx_login_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD 'pw-{name}'")
    parts = urlsplit(db_url)
    url = parts._replace(netloc=f"{name}:pw-{name}@{parts.hostname}:{parts.port}").geturl()
    yield name, url
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'REASSIGN OWNED BY "{name}" TO postgres')
        conn.execute(f'DROP OWNED BY "{name}"')
        conn.execute(f'DROP ROLE "{name}"')


def _assert_refused(db: Database, *statements: str) -> None:
    """Each statement, in a transaction of its own, fails for lack of privilege."""
    for statement in statements:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction() as gw:
            gw.conn.execute(statement)


def _grant(db_url: str, role: str, name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime_executor", "db", "grant", role, name],
        env=daemon_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"granted runtime_executor_{role} to {name}" in result.stdout


def test_runner_role_runs_tasks_but_cannot_touch_requests(db, db_url, login):
    name, url = login
    _grant(db_url, "runner", name)
    _grant(db_url, "runner", name)  # idempotent
    [allocation] = insert_allocations(db, 1, workload={"x": 1})
    runner_id = str(uuid.uuid4())
    as_runner = Database(Settings(database_url=url), "test-runner-role")
    try:
        with as_runner.transaction() as gw:
            gw.register_runner(
                id=runner_id,
                name="r",
                hostname="h",
                pid=1,
                queues=["default"],
                slots=4,
                cpu=1.0,
                memory_mb=1024,
                version="t",
                lease_timeout=30,
            )
        with db.transaction() as gw:
            assign_to(gw, [allocation], runner_id)
        with as_runner.transaction() as gw:
            assert gw.heartbeat_runner(runner_id, 30)["state"] == "active"
            [started] = gw.start_assigned(runner_id)
            assert started["workload"] == '{"x": 1}'
            assert gw.finish_allocation(allocation, runner_id, "succeeded", 0, None) == "succeeded"
        _assert_refused(
            as_runner,
            "UPDATE runtime_executor.allocations SET priority_weight = 100",
            "DELETE FROM runtime_executor.allocations",
            "INSERT INTO runtime_executor.allocation_events (allocation_id, to_state) VALUES (gen_random_uuid(), 'x')",
        )
    finally:
        as_runner.close()


def test_status_role_reads_the_snapshot_but_never_the_workload(db, db_url, login):
    name, url = login
    _grant(db_url, "status", name)
    insert_allocations(db, 2, workload={"token": "secret-token"})
    reader = Database(Settings(database_url=url), "test-status-role")
    try:
        with reader.transaction() as gw:
            snap = snapshot(gw)
        assert len(snap["unassigned"]) == 2
        _assert_refused(
            reader,
            "SELECT workload FROM runtime_executor.allocations",
            "UPDATE runtime_executor.runners SET state = 'draining'",
        )
    finally:
        reader.close()


def test_allocator_and_executor_roles_do_their_jobs(db, db_url, login, daemons, tmp_path):
    name, url = login
    _grant(db_url, "allocator", name)
    _grant(db_url, "executor", name)
    _grant(db_url, "runner", name)
    # real daemons logged in with only those roles place and run work
    daemons.allocator(RTX_DATABASE_URL=url)
    daemons.runner(name="r1", RTX_DATABASE_URL=url)
    executor_db = Database(Settings(database_url=url), "test-executor-role")
    try:
        ids = insert_allocations(executor_db, 3, workload={})
        assert set(wait_states(db_url, ids, {"succeeded", "failed"}).values()) == {"succeeded"}
        with executor_db.transaction() as gw:
            assert {str(r["id"]) for r in gw.report_outcomes(None)} == set(ids)
        # even all three roles together cannot rewrite a request or alter the schema
        _assert_refused(
            executor_db,
            "UPDATE runtime_executor.allocations SET slots = 64",
            "ALTER TABLE runtime_executor.allocations ADD COLUMN x int",
        )
    finally:
        executor_db.close()
