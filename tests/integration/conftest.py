"""Fixtures for integration tests of the executor shim and the command-line entry points.

Airflow is imported lazily (inside fixtures), so integration tests that do not use the shim do not
pay for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime_executor.db.connection import Database
from runtime_executor.db.migrate import migrate
from runtime_executor.settings import Settings
from tests.conftest import throwaway_database
from tests.support.allocations import assign_to

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE_URL = "postgresql://user:s3cretpw@127.0.0.1:1/x"
TOKEN = "secret-token-value"


# -- the executor shim -----------------------------------------------------------------------------


def sqlalchemy_url(libpq_url: str) -> str:
    return libpq_url.replace("postgresql://", "postgresql+psycopg://", 1)


class Rtx:
    """One test's rtx schema in the module's database, with plain-SQL probes (``{schema}`` is replaced)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.settings = Settings(database_url=url, schema=schema)

    def rows(self, sql: str, params: Any = None) -> list[dict]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            cur = conn.execute(sql.replace("{schema}", f'"{self.schema}"'), params)
            return cur.fetchall() if cur.description else []

    def allocation(self, allocation_id: str) -> dict | None:
        found = self.rows("SELECT * FROM {schema}.allocations WHERE id = %s", (allocation_id,))
        return found[0] if found else None

    def allocation_count(self) -> int:
        return self.rows("SELECT count(*) AS n FROM {schema}.allocations")[0]["n"]

    def tables(self) -> set[str]:
        found = self.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.schema,)
        )
        return {r["table_name"] for r in found}

    def versions(self) -> list[int]:
        return [
            r["version"] for r in self.rows("SELECT version FROM {schema}.schema_migrations ORDER BY version")
        ]


@pytest.fixture
def rtx(module_db_url, monkeypatch) -> Rtx:
    """A fresh, empty schema for this test (cheaper than a database per test); rtx is pointed at it
    with ``RTX_SCHEMA`` and at the database through Airflow's own connection setting."""
    for name in list(os.environ):
        if name.startswith(("RTX_", "AIRFLOW__RUNTIME_EXECUTOR__")):
            monkeypatch.delenv(name)
    schema = f"rtx_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("RTX_SCHEMA", schema)
    monkeypatch.setenv("AIRFLOW_CONFIG", os.devnull)  # rtx reads no [runtime_executor] of this machine
    url = sqlalchemy_url(module_db_url)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", url)
    return Rtx(module_db_url, schema)


@pytest.fixture
def rtx_db(rtx) -> Iterator[Database]:
    """The test's schema, migrated, and a Database (the daemons' side) on it."""
    import psycopg

    with psycopg.connect(rtx.url, autocommit=True) as conn:
        migrate(conn, rtx.schema)
    database = Database(rtx.settings, "rtx-test")
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def engine(rtx) -> Iterator[Any]:
    """A SQLAlchemy engine on the test database: its sessions play the scheduler's session."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    eng = sqlalchemy.create_engine(sqlalchemy_url(rtx.url), poolclass=NullPool)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def make_executor(rtx) -> Iterator[Callable[..., Any]]:
    """``make_executor(job_id=1, start=True, parallelism=None)``: a RuntimeExecutor as the scheduler
    sets it up (parallelism: [core] parallelism unless given)."""
    from runtime_executor.executor import RuntimeExecutor

    made: list[Any] = []

    def make(job_id: int | None = 1, *, start: bool = True, parallelism: int | None = None) -> Any:
        executor = RuntimeExecutor() if parallelism is None else RuntimeExecutor(parallelism=parallelism)
        executor.job_id = job_id
        made.append(executor)
        if start:
            executor.start()
        return executor

    yield make
    for executor in made:
        executor.terminate()


def task_workload(
    *,
    dag_id: str = "rtx_dag",
    task_id: str = "task",
    run_id: str = "manual__2026-01-01",
    try_number: int = 1,
    map_index: int = -1,
    queue: str = "default",
    priority_weight: int = 1,
    executor_config: dict | None = None,
    external_executor_id: str | None | object = ...,
) -> Any:
    """An ExecuteTask workload as the scheduler builds it (executor id pre-assigned)."""
    from airflow.executors.workloads import BundleInfo, ExecuteTask, TaskInstanceDTO

    if external_executor_id is ...:
        external_executor_id = str(uuid.uuid4())
    return ExecuteTask(
        ti=TaskInstanceDTO(
            id=uuid.uuid4(),
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id,
            try_number=try_number,
            dag_version_id=uuid.uuid4(),
            map_index=map_index,
            pool_slots=1,
            priority_weight=priority_weight,
            queue=queue,
            executor_config=executor_config,
            external_executor_id=external_executor_id,
        ),
        bundle_info=BundleInfo(name="dags-folder"),
        token=TOKEN,
        dag_rel_path=Path(f"{dag_id}.py"),
        log_path=f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/attempt={try_number}.log",
    )


def callback_workload(path: str = "rtx_tests.callbacks.notify") -> Any:
    from airflow.executors.workloads import BundleInfo, CallbackFetchMethod, ExecuteCallback
    from airflow.executors.workloads.callback import CallbackDTO

    return ExecuteCallback(
        callback=CallbackDTO(
            id=str(uuid.uuid4()), fetch_method=CallbackFetchMethod.IMPORT_PATH, data={"path": path}
        ),
        bundle_info=BundleInfo(name="dags-folder"),
        token=TOKEN,
        dag_rel_path=Path("rtx_dag.py"),
        log_path="executor_callbacks/rtx_dag/run/cb.log",
    )


def queue_in_session(executor: Any, engine: Any, *workloads: Any, commit: bool = True) -> None:
    """What the scheduler does: queue_workload with its session, then commit (or roll back)."""
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        for workload in workloads:
            executor.queue_workload(workload, session)
        if commit:
            session.commit()
        else:
            session.rollback()


# -- a runner, as the runner daemon would write it (through the Gateway) ---------------------------


def register_runner(db: Database, *, name: str = "r1", queues: list[str] | None = None) -> str:
    runner_id = str(uuid.uuid4())
    with db.transaction() as gw:
        gw.register_runner(
            id=runner_id,
            name=name,
            hostname="test-host",
            pid=os.getpid(),
            queues=queues or ["default"],
            slots=16,
            cpu=8.0,
            memory_mb=16384,
            version="test",
            lease_timeout=600.0,
        )
    return runner_id


def start_on_runner(db: Database, allocation_id: str, runner_id: str) -> None:
    """unassigned -> assigned (the allocator's guarded statement) -> running (as the runner does it)."""
    with db.transaction() as gw:
        assert assign_to(gw, [allocation_id], runner_id) == 1
        cur = gw.conn.execute(
            f'UPDATE "{gw.schema}".allocations SET state = %s, started_at = clock_timestamp()'
            " WHERE id = %s AND runner_id = %s AND state = %s AND NOT cancel_requested",
            ("running", allocation_id, runner_id, "assigned"),
        )
        assert cur.rowcount == 1


def finish_on_runner(
    db: Database,
    allocation_id: str,
    runner_id: str,
    state: str,
    exit_code: int | None = 0,
    reason: str | None = None,
) -> str | None:
    with db.transaction() as gw:
        return gw.finish_allocation(allocation_id, runner_id, state, exit_code, reason)


# -- command-line entry points ---------------------------------------------------------------------


def cli_env(db_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a command: no rtx or Airflow setting from the test process, and no
    airflow.cfg either (a ``~/airflow/airflow.cfg`` on the machine must not change the outcome)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTX_", "AIRFLOW__", "ALLOCATOR_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["AIRFLOW_CONFIG"] = os.devnull
    if db_url is not None:
        env["RTX_DATABASE_URL"] = db_url
    env.update(extra)
    return env


def run_cli(*argv: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m <argv>`` to completion (``argv[0]`` is the module)."""
    return subprocess.run(
        [sys.executable, "-m", *argv], env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def run_clis(
    commands: list[tuple[list[str], dict[str, str]]], timeout: float = 60
) -> list[subprocess.CompletedProcess]:
    """Several ``python -m`` commands at once (they are independent); results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for argv, env in commands
    ]
    results = []
    try:
        for (argv, _), proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            results.append(
                subprocess.CompletedProcess([sys.executable, "-m", *argv], proc.returncode, out, err)
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.fixture(scope="module")
def module_db_url(pg_admin_url) -> Iterator[str]:
    """A database shared by the tests of one module (for a long-lived daemon)."""
    with throwaway_database(pg_admin_url) as url:
        yield url
