"""A separate rtx database (``RTX_DATABASE_URL``) that goes away never stops the scheduler.

The executor reaches its own database through a TCP proxy that the test cuts the way a vanished
host does (connections accepted, never answered: every connect waits for its timeout), while the
scheduler's own session (Airflow's database) and the runner's side stay up. Queueing does not raise
(the workload waits in the executor's queue), sync/revoke/adopt return at once after the first
failure, and once the proxy is restored everything arrives: the outcome that finished meanwhile,
the workload queued meanwhile, the revoke asked for meanwhile (issue 11, item 5).
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from airflow.utils.state import TaskInstanceState

from testing.proxy import TcpProxy
from tests.integration.conftest import (
    finish_on_runner,
    queue_in_session,
    register_runner,
    start_on_runner,
    task_workload,
)

RUNTIME = {"runtime": {"cpu": 0.5, "memory": "256MB", "slots": 1}}
FAST = 1.0  # seconds: a generous bound for a call that must not touch the unreachable database
FIRST_FAILURE = 15.0  # the call that finds the outage may wait for one connect timeout (5 s)


@pytest.fixture
def proxy(rtx, rtx_db, monkeypatch) -> Iterator[TcpProxy]:
    parts = urlsplit(rtx.url)
    tcp = TcpProxy(parts.hostname, parts.port)
    monkeypatch.setenv(
        "RTX_DATABASE_URL", parts._replace(netloc=f"{parts.username}@127.0.0.1:{tcp.port}").geturl()
    )
    try:
        yield tcp
    finally:
        tcp.close()


def _timed(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_outage_of_a_separate_rtx_database_never_stops_the_scheduler(
    make_executor, engine, rtx_db, rtx, proxy
):
    executor = make_executor()
    assert executor._shares_airflow_db is False
    done = task_workload(task_id="done", executor_config=RUNTIME)
    revoked = task_workload(task_id="revoked", executor_config=RUNTIME)
    queue_in_session(executor, engine, done, revoked)
    executor.sync()
    assert executor.get_event_buffer() == {}

    proxy.cut(hang=True)
    # the runner's side still reaches the database: the task finishes during the outage
    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, done.ti.external_executor_id, runner_id)
    finish_on_runner(rtx_db, done.ti.external_executor_id, runner_id, "succeeded")

    # queueing never raises into the scheduler: the workload waits in the executor's own queue
    during = task_workload(task_id="during", executor_config=RUNTIME)
    first = _timed(lambda: queue_in_session(executor, engine, during))
    assert first < FIRST_FAILURE
    assert during.ti.key in executor.queued_tasks and during.ti.key not in executor.running
    assert rtx.allocation(during.ti.external_executor_id) is None

    # after that first failure nothing waits for the database
    later = task_workload(task_id="later", executor_config=RUNTIME)
    calls = {
        "queue_workload": _timed(lambda: queue_in_session(executor, engine, later)),
        "revoke_task": _timed(lambda: executor.revoke_task(ti=revoked.ti)),
        "try_adopt_task_instances": _timed(
            lambda: executor.try_adopt_task_instances(
                [types.SimpleNamespace(key=done.ti.key, external_executor_id=done.ti.external_executor_id)]
            )
        ),
    }
    loop = [_timed(executor.heartbeat) for _ in range(5)]  # the scheduler's loop: trigger_tasks + sync
    print(
        f"\nwhile cut: first failing call {first:.2f} s; then {calls}; heartbeat+sync {[round(t, 3) for t in loop]}"
    )
    assert max(calls.values()) < FAST, calls
    assert max(loop) < FAST, loop
    assert executor.get_event_buffer() == {}  # nothing was lost, nothing invented
    assert later.ti.key in executor.queued_tasks
    assert rtx.allocation(revoked.ti.external_executor_id)["state"] == "unassigned"

    proxy.restore()
    restored = time.monotonic()
    events: dict = {}
    deadline = restored + 60
    while time.monotonic() < deadline:
        executor.heartbeat()
        events.update(executor.get_event_buffer())
        inserted = [rtx.allocation(w.ti.external_executor_id) for w in (during, later)]
        if done.ti.key in events and all(inserted) and not executor.queued_tasks:
            break
        time.sleep(0.2)
    print(f"restored: all delivered and written {time.monotonic() - restored:.1f} s later")
    assert events.get(done.ti.key, (None,))[0] == TaskInstanceState.SUCCESS, events
    for workload in (during, later):
        row = rtx.allocation(workload.ti.external_executor_id)
        assert row is not None and row["state"] == "unassigned"
        assert workload.ti.key in executor.running
    assert not executor.queued_tasks
    # the revoke asked for during the outage is applied once the database is back
    assert rtx.allocation(revoked.ti.external_executor_id)["state"] == "cancelled"


def test_a_workload_revoked_while_it_waits_is_never_queued(make_executor, engine, rtx_db, rtx, proxy):
    executor = make_executor()
    executor.sync()
    proxy.cut(hang=True)
    waiting = task_workload(task_id="waiting", executor_config=RUNTIME)
    queue_in_session(executor, engine, waiting)
    assert waiting.ti.key in executor.queued_tasks
    executor.revoke_task(ti=waiting.ti)  # e.g. Airflow's task_queued_timeout
    assert waiting.ti.key not in executor.queued_tasks
    proxy.restore()
    deadline = time.monotonic() + 60
    while executor._gate.down and time.monotonic() < deadline:
        executor.heartbeat()
        time.sleep(0.2)
    executor.heartbeat()
    assert rtx.allocation(waiting.ti.external_executor_id) is None
    assert waiting.ti.key not in executor.running
