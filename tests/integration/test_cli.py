"""The real console entry points, run as subprocesses: ``python -m runtime_executor|allocator|runner``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from allocator.strategies import STRATEGIES
from runtime_executor.db.connection import Database
from runtime_executor.db.migrate import migrations
from runtime_executor.settings import Settings
from tests.integration.conftest import REPO, TOKEN, UNREACHABLE_URL, cli_env, run_cli, run_clis
from tests.support.allocations import assign_to, insert_allocations
from tests.support.daemons import Daemon, Daemons, query, wait_for

PASSWORD = "s3cretpw"


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The process failed with exit code 1 and exactly one line on stderr: ``error: ...``."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    assert result.returncode == 1, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:"), output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# -- rtx db migrate --------------------------------------------------------------------------------


def _applied_versions(db_url: str) -> list[int]:
    return [
        r[0] for r in query(db_url, "SELECT version FROM runtime_executor.schema_migrations ORDER BY version")
    ]


def test_db_migrate_creates_then_reports_up_to_date(db_url):
    env = cli_env(db_url)
    first = run_cli("runtime_executor", "db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    names = [name for _, name, _ in migrations()]
    assert all(name in first.stdout for name in names)
    assert _applied_versions(db_url) == [v for v, _, _ in migrations()]
    assert query(db_url, "SELECT to_regclass('runtime_executor.allocations') IS NOT NULL")[0][0]

    again = run_cli("runtime_executor", "db", "migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert not any(name in again.stdout for name in names)
    assert _applied_versions(db_url) == [v for v, _, _ in migrations()]


def test_two_concurrent_migrations_both_succeed_and_apply_once(db_url):
    """Both start while the schema cannot be created yet; the lock makes them take turns."""
    env = cli_env(db_url)
    argv = [sys.executable, "-m", "runtime_executor", "db", "migrate"]
    with psycopg.connect(db_url) as blocker:
        # Hold the schema's name in an open transaction: the first migration blocks on it; the
        # second must then be waiting for the first (the advisory lock), not racing it.
        blocker.execute('CREATE SCHEMA "runtime_executor"')
        procs = [
            subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        try:
            wait_for(
                lambda: (
                    query(
                        db_url,
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                    )[0][0]
                    == 2
                ),
                timeout=30,
                what="both migrations to be waiting",
            )
        finally:
            blocker.rollback()
        results = [(p.wait(60), *p.communicate()) for p in procs]

    for code, out, err in results:
        assert code == 0, out + err
    outputs = sorted(out for _, out, _ in results)
    assert sum("up to date" in out for out in outputs) == 1, outputs
    assert sum(all(name in out for _, name, _ in migrations()) for out in outputs) == 1, outputs
    assert _applied_versions(db_url) == [v for v, _, _ in migrations()]


# -- rtx status, rtx runner drain/resume, against a live runner -----------------------------------


@dataclass
class Live:
    url: str
    env: dict[str, str]
    runner: Daemon
    runner_id: str
    waiting: list[str]
    running: str


RUNNER_NAME = "cli-runner"


@pytest.fixture(scope="module")
def live(module_db_url, tmp_path_factory) -> Iterator[Live]:
    env = cli_env(module_db_url)
    migrated = run_cli("runtime_executor", "db", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    daemons = Daemons(module_db_url, tmp_path_factory.mktemp("cli-daemons"))
    db = Database(Settings(database_url=module_db_url), "rtx-test-cli")
    try:
        runner = daemons.runner(
            "--slots",
            "4",
            "--cpu",
            "2",
            "--memory",
            "4GiB",
            "--queue",
            "default",
            "--queue",
            "etl",
            name=RUNNER_NAME,
            RTX_DRAIN_TIMEOUT="0.2",
            RTX_HEARTBEAT_INTERVAL="0.5",
            RTX_LEASE_TIMEOUT="10",
        )
        rows = wait_for(
            lambda: query(
                module_db_url,
                "SELECT id FROM runtime_executor.runners WHERE name = %(n)s AND state = 'active'",
                {"n": RUNNER_NAME},
            ),
            timeout=30,
            what="the runner to register",
        )
        runner_id = str(rows[0][0])
        waiting = insert_allocations(
            db,
            2,
            workload={"token": TOKEN},
            queue="etl",
            slots=2,
            cpu=0.5,
            memory_mb=300,
            priority_weight=5,
            dag_id="cli_wait",
        )
        (running,) = insert_allocations(
            db, 1, workload={"sleep": 120}, slots=1, cpu=1.0, memory_mb=1024, dag_id="cli_run"
        )
        with db.transaction() as gw:
            assert assign_to(gw, [running], runner_id) == 1
        wait_for(
            lambda: query(
                module_db_url,
                "SELECT 1 FROM runtime_executor.allocations WHERE id = %(id)s AND state = 'running'",
                {"id": running},
            ),
            timeout=30,
            what="the runner to start the task",
        )
        yield Live(module_db_url, env, runner, runner_id, waiting, running)
    finally:
        daemons.stop_all()
        db.close()


def _runner_state(live: Live) -> str:
    return query(
        live.url, "SELECT state FROM runtime_executor.runners WHERE id = %(id)s", {"id": live.runner_id}
    )[0][0]


def test_status_json_has_the_documented_shape_and_numbers(live):
    result = run_cli("runtime_executor", "status", "--json", env=live.env)
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    assert set(snap) == {"generated_at", "totals", "queues", "runners", "unassigned", "autoscale"}
    assert dt.datetime.fromisoformat(snap["generated_at"]).tzinfo is not None

    totals = snap["totals"]
    assert totals["slots"] == {"capacity": 4, "reserved": 1, "free": 3}
    assert totals["cpu"] == {"capacity": 2.0, "reserved": 1.0, "free": 1.0}
    assert totals["memory_mb"] == {"capacity": 4096, "reserved": 1024, "free": 3072}
    assert totals["runners"] == 1
    assert totals["allocations"] == {"unassigned": 2, "running": 1}

    assert set(snap["queues"]) == {"default", "etl"}
    assert snap["queues"]["etl"]["unassigned"] == 2 and snap["queues"]["default"]["unassigned"] == 0
    assert snap["queues"]["etl"]["runners"] == 1
    assert snap["queues"]["etl"]["slots"]["capacity"] == 4

    (runner,) = snap["runners"]
    assert {
        "id",
        "name",
        "hostname",
        "pid",
        "queues",
        "state",
        "capacity",
        "reserved",
        "free",
        "heartbeat_age_s",
        "lease_expired",
        "allocations",
    } <= set(runner)
    assert (runner["id"], runner["name"], runner["state"]) == (live.runner_id, RUNNER_NAME, "active")
    assert runner["pid"] == live.runner.pid
    assert sorted(runner["queues"]) == ["default", "etl"]
    assert runner["capacity"] == {"slots": 4, "cpu": 2.0, "memory_mb": 4096}
    assert runner["free"] == {"slots": 3, "cpu": 1.0, "memory_mb": 3072}
    assert runner["lease_expired"] is False
    (on_runner,) = runner["allocations"]
    assert (on_runner["id"], on_runner["state"]) == (live.running, "running")
    assert on_runner["request"] == {"slots": 1, "cpu": 1.0, "memory_mb": 1024}

    assert {a["id"] for a in snap["unassigned"]} == set(live.waiting)
    for a in snap["unassigned"]:
        assert (a["queue"], a["priority_weight"], a["state"]) == ("etl", 5, "unassigned")
        assert a["request"] == {"slots": 2, "cpu": 0.5, "memory_mb": 300}
        assert a["dag_id"] == "cli_wait"

    assert TOKEN not in result.stdout


def test_status_renders_the_tables(live):
    result = run_cli("runtime_executor", "status", env=live.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("Resources", "Runners", "Allocations on runners", "Unassigned allocations"):
        assert heading in out
    assert RUNNER_NAME in out
    assert "cli_run.task_0" in out  # on the runner
    assert "cli_wait.task_0" in out and "cli_wait.task_1" in out  # waiting
    assert "4 / 1 / 3" in out  # slots: capacity / reserved / free
    assert "running 1" in out and "unassigned 2" in out
    assert TOKEN not in out


def test_drain_and_resume_change_the_runner_state_and_the_runner_notices(live):
    drained = run_cli("runtime_executor", "runner", "drain", RUNNER_NAME, env=live.env)
    assert drained.returncode == 0, drained.stderr
    assert "draining" in drained.stdout
    assert _runner_state(live) == "draining"
    wait_for(lambda: "runner drain requested" in live.runner.log(), timeout=15, what="the runner to notice")

    # draining is visible in the status, and a draining runner counts for no capacity
    snap = json.loads(run_cli("runtime_executor", "status", "--json", env=live.env).stdout)
    assert snap["runners"][0]["state"] == "draining"
    assert snap["totals"]["runners"] == 0

    resumed = run_cli("runtime_executor", "runner", "resume", live.runner_id, env=live.env)  # by id this time
    assert resumed.returncode == 0, resumed.stderr
    assert _runner_state(live) == "active"
    wait_for(
        lambda: "runner resumed" in live.runner.log(), timeout=15, what="the runner to notice the resume"
    )
    # the task it was running was not disturbed by the drain
    assert (
        query(
            live.url, "SELECT state FROM runtime_executor.allocations WHERE id = %(id)s", {"id": live.running}
        )[0][0]
        == "running"
    )


def test_drain_of_an_unknown_runner_fails_clearly(live):
    result = run_cli("runtime_executor", "runner", "drain", "no-such-runner", env=live.env)
    _one_error_line(result, "no-such-runner")
    assert _runner_state(live) == "active"


def test_status_without_a_schema_fails_clearly(db_url):
    _one_error_line(run_cli("runtime_executor", "status", env=cli_env(db_url)), "not found", "rtx db migrate")


# -- start-up errors: exit 1, one line, no traceback, no password -----------------------------------
# Each subprocess costs about half a second of CPU, so every case below exercises a different path.


def test_bad_flag_exits_non_zero_with_one_clear_line():
    commands = [
        (["allocator", "serve", "--bogus"], "--bogus"),
        (["runner", "serve", "--slots", "0"], "--slots"),
    ]
    results = run_clis([(argv, cli_env(UNREACHABLE_URL)) for argv, _ in commands])
    for (argv, flag), result in zip(commands, results, strict=True):
        assert result.returncode == 2, argv  # click's usage-error code
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert flag in lines[0], (argv, lines)


def test_unreachable_database_is_one_line_without_password():
    keyword_form = f"host=127.0.0.1 port=1 user=user password={PASSWORD} dbname=x"
    airflow_form = UNREACHABLE_URL.replace("postgresql://", "postgresql+psycopg://")
    commands = [
        (["runtime_executor", "db", "migrate"], cli_env(UNREACHABLE_URL)),
        (["runtime_executor", "status", "--json"], cli_env(UNREACHABLE_URL)),
        # as a flag (discouraged, but it must not leak either)
        (["allocator", "serve", "--database-url", UNREACHABLE_URL], cli_env()),
        # libpq keyword form
        (["runner", "serve", "--cpu", "1", "--memory", "512"], cli_env(keyword_form)),
        # the default: Airflow's own connection
        (["allocator", "serve"], cli_env(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow_form)),
    ]
    for (argv, _), result in zip(commands, run_clis(commands), strict=True):
        line = _one_error_line(result)
        assert "127.0.0.1" in line, (argv, line)
        assert result.stdout == "", (argv, result.stdout)


def test_bad_settings_are_one_line():
    commands = [
        (["allocator", "serve"], cli_env(UNREACHABLE_URL, RTX_SCHEMA="Bad-Schema"), ("Bad-Schema",)),
        (["runtime_executor", "status"], cli_env(UNREACHABLE_URL, RTX_LOG_FORMAT="xml"), ("xml",)),
        (["allocator", "serve"], cli_env(), ("RTX_DATABASE_URL",)),  # no database configured at all
    ]
    results = run_clis([(argv, env) for argv, env, _ in commands])
    for (_, _, fragments), result in zip(commands, results, strict=True):
        _one_error_line(result, *fragments)


def test_bad_strategy_lists_the_valid_names():
    commands = [
        (["allocator", "serve", "--strategy", "Bogus"], cli_env(UNREACHABLE_URL)),
        (["allocator", "serve"], cli_env(UNREACHABLE_URL, ALLOCATOR_STRATEGY="Bogus")),
    ]
    for result in run_clis(commands):
        # refused before any connection attempt: the line is about the strategy, not the database
        line = _one_error_line(result, "Bogus", *STRATEGIES)
        assert "127.0.0.1" not in line


def test_runner_bad_capacity_is_one_clear_line():
    commands = [
        (["runner", "serve", "--memory", "lots"], ("--memory", "lots")),
        (["runner", "serve", "--cpu", "-2"], ("--cpu", "-2")),
    ]
    results = run_clis([(argv, cli_env(UNREACHABLE_URL)) for argv, _ in commands])
    for (_, fragments), result in zip(commands, results, strict=True):
        line = _one_error_line(result, *fragments)
        assert "127.0.0.1" not in line


def test_bad_log_level_is_one_line():
    _one_error_line(
        run_cli("allocator", "serve", "--log-level", "verbose", env=cli_env(UNREACHABLE_URL)), "verbose"
    )


def test_resume_does_not_revive_a_runner_that_is_shutting_down(rtx_db, rtx, tmp_path):
    daemons = Daemons(rtx.url, tmp_path)
    env = dict(
        RTX_SCHEMA=rtx.schema, RTX_DRAIN_TIMEOUT="30", RTX_HEARTBEAT_INTERVAL="0.3", RTX_LEASE_TIMEOUT="10"
    )
    runner = daemons.runner("--slots", "2", "--cpu", "1", "--memory", "512", name="stopping", **env)
    try:
        runner_id = wait_for(
            lambda: rtx.rows("SELECT id FROM {schema}.runners WHERE state = 'active'"),
            timeout=30,
            what="register",
        )[0]["id"]
        (busy,) = insert_allocations(rtx_db, 1, workload={"sleep": 8})
        with rtx_db.transaction() as gw:
            assign_to(gw, [busy], str(runner_id))
        wait_for(lambda: rtx.allocation(busy)["state"] == "running", timeout=30, what="the task to start")

        runner.send(signal.SIGTERM)
        wait_for(lambda: "runner draining" in runner.log(), timeout=15, what="the runner to start draining")
        run_cli(
            "runtime_executor", "runner", "resume", "stopping", env=cli_env(rtx.url, RTX_SCHEMA=rtx.schema)
        )
        time.sleep(1.0)  # a few heartbeats
        if rtx.allocation(busy)["state"] != "running":
            pytest.skip("too slow: the task finished before the check")
        assert "runner resumed" not in runner.log()
        assert rtx.rows("SELECT state FROM {schema}.runners")[0]["state"] in ("draining", "stopped")
    finally:
        pids = [r["pid"] for r in rtx.rows("SELECT pid FROM {schema}.allocations WHERE pid IS NOT NULL")]
        runner.kill()  # its process group; the task runs in a session of its own
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        runner.stop()
