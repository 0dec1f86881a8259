"""Issue 11, item 1: no lock that placement holds may delay a heartbeat (DESIGN.md "Failure model").

A placement pass holds its placement lock from the read of the runners' usage to the commit of its
assignments. A session that holds that lock for longer than the lease (a frozen allocator, or a
foreign session doing what placement does) must not stop healthy runners from renewing their
leases: their running tasks keep running and succeed on their first try.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import psycopg
import pytest

from runtime_executor.db.gateway import Gateway
from testing.daemons import Daemon, query, wait_for
from tests.integration.test_faults import DONE, _never_twice_at_once, _pids_of
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

LEASE = float(FAST["RTX_LEASE_TIMEOUT"])


def _heartbeat_at(db_url: str, runner_id: str) -> float:
    [(at,)] = query(
        db_url,
        "SELECT extract(epoch FROM heartbeat_at)::float8 FROM runtime_executor.runners WHERE id = %(r)s",
        {"r": runner_id},
    )
    return at


def _long_task_on_one_runner(
    db, daemons, tmp_path, sleep: float, **allocator_env: str
) -> tuple[Daemon, str, str, int]:
    """An allocator, one runner (one slot) and one task running for ``sleep`` s:
    (allocator, runner id, task, task pid)."""
    allocator = daemons.allocator(**FAST, **allocator_env)
    daemons.runner("--slots", "1", name="r1", **FAST)
    [runner_id] = wait_runners(daemons.db_url, 1)
    record = tmp_path / "record.txt"
    [task] = insert_allocations(db, 1, workload={"sleep": sleep, "record": str(record)})
    [pid] = wait_for(lambda: _pids_of(read_records(record), [task]), 20, what="the task process")
    return allocator, runner_id, task, pid


def _assert_heartbeats_and_task_survive(db_url: str, runner_id: str, pid: int, hold: float) -> None:
    """While the lock is held for ``hold`` s: the runner's heartbeats land and its task stays alive."""
    before = _heartbeat_at(db_url, runner_id)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        assert psutil.pid_exists(pid), "the runner fenced its task while placement was held"
        time.sleep(0.2)
    after = _heartbeat_at(db_url, runner_id)
    assert after - before > hold - LEASE / 2, (
        f"heartbeats stalled: renewed {after - before:.1f} s in {hold:.1f} s"
    )


def test_a_foreign_session_holding_the_placement_lock_delays_no_heartbeat(db, daemons, tmp_path):
    """A foreign session takes exactly what a placement pass takes (``lock_live_runners``) and holds
    it for twice the lease: the runner keeps renewing its lease and its task succeeds on try 1."""
    record = tmp_path / "record.txt"
    _allocator, runner_id, task, pid = _long_task_on_one_runner(db, daemons, tmp_path, sleep=2 * LEASE + 3)
    with psycopg.connect(daemons.db_url) as foreign:  # a transaction that stays open
        locked = Gateway(foreign, "runtime_executor").lock_live_runners()
        assert [str(r["id"]) for r in locked] == [runner_id]
        _assert_heartbeats_and_task_survive(daemons.db_url, runner_id, pid, hold=2 * LEASE)
        foreign.rollback()
    assert wait_states(daemons.db_url, [task], DONE, timeout=20) == {task: "succeeded"}
    starts = [r for r in read_records(record) if r[0] == "start"]
    assert len(starts) == 1
    _never_twice_at_once(read_records(record))
    assert query(
        daemons.db_url, "SELECT state FROM runtime_executor.runners WHERE id = %(r)s", {"r": runner_id}
    ) == [("active",)]


@pytest.mark.xfail(
    strict=True,
    reason="known limit: the lease lives in the runner row, so a session holding FOR UPDATE on that row "
    "(an allocator of a release before schema 2, or any foreign session) still blocks its heartbeats; "
    "rtx itself no longer takes such a lock for longer than one statement",
)
def test_a_foreign_session_holding_the_runner_rows_the_old_way(db, daemons, tmp_path):
    """What placement took before issue 11 (FOR UPDATE on the live runner rows), held by a foreign
    session for two leases: heartbeats need those rows, so the runner fences its task."""
    _allocator, runner_id, task, pid = _long_task_on_one_runner(db, daemons, tmp_path, sleep=2 * LEASE + 3)
    with psycopg.connect(daemons.db_url) as foreign:
        foreign.execute(
            "SELECT id FROM runtime_executor.runners WHERE state = 'active' ORDER BY id FOR UPDATE"
        )
        try:
            _assert_heartbeats_and_task_survive(daemons.db_url, runner_id, pid, hold=2 * LEASE)
        finally:
            foreign.rollback()


def _placement_backend(db_url: str, allocator_pid: int) -> int | None:
    rows = query(
        db_url,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %(app)s",
        {"app": f"rtx-allocator@{os.uname().nodename}:{allocator_pid}"},
    )
    return rows[0][0] if rows else None


def _holds_placement_locks(conn: psycopg.Connection, backend: int) -> bool:
    """The placement backend is inside a pass and holds what the pass locks: advisory locks, or
    (the way placement used to lock) row locks, which give its transaction an xid."""
    row = conn.execute(
        "SELECT a.state, a.backend_xid IS NOT NULL,"
        " EXISTS (SELECT 1 FROM pg_locks AS l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)"
        " FROM pg_stat_activity AS a WHERE a.pid = %s",
        [backend],
    ).fetchone()
    return row is not None and row[0] == "idle in transaction" and (row[1] or row[2])


def _freeze_mid_pass(db_url: str, allocator, attempts: int = 200) -> None:
    """SIGSTOP the allocator while its placement pass holds the placement locks (tries until it does)."""
    backend = wait_for(lambda: _placement_backend(db_url, allocator.pid), 20, what="the placement session")
    with psycopg.connect(db_url, autocommit=True) as probe:
        for _ in range(attempts):
            in_pass = probe.execute(
                "SELECT state <> 'idle' AND xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = %s",
                [backend],
            ).fetchone()
            if in_pass and in_pass[0]:
                os.kill(allocator.pid, signal.SIGSTOP)
                time.sleep(0.05)
                if _holds_placement_locks(probe, backend):
                    return
                os.kill(allocator.pid, signal.SIGCONT)
            time.sleep(0.002)
    raise AssertionError("could not catch the allocator mid-pass")


def test_a_frozen_allocator_mid_pass_fences_no_task(db, daemons, tmp_path):
    """The allocator is SIGSTOPped inside a placement pass (its placement locks held) for twice the
    lease: the runner's heartbeats continue, its task is not fenced and succeeds on try 1; once the
    allocator resumes, the work that waited is placed and runs."""
    record = tmp_path / "record.txt"
    # passes every few ms: the one slot is busy, so every pass finds work it cannot place
    allocator, runner_id, task, pid = _long_task_on_one_runner(
        db, daemons, tmp_path, sleep=2 * LEASE + 4, RTX_ALLOCATOR_POLL_INTERVAL="0.005"
    )
    waiting = insert_allocations(db, 3, workload={"record": str(record)})
    _freeze_mid_pass(daemons.db_url, allocator)
    try:
        _assert_heartbeats_and_task_survive(daemons.db_url, runner_id, pid, hold=2 * LEASE)
    finally:
        os.kill(allocator.pid, signal.SIGCONT)
    assert wait_states(daemons.db_url, [task], DONE, timeout=20) == {task: "succeeded"}
    assert set(wait_states(daemons.db_url, waiting, DONE, timeout=30).values()) == {"succeeded"}
    starts = [r[1] for r in read_records(record) if r[0] == "start"]
    assert sorted(starts) == sorted([task, *waiting])  # each once: nothing was fenced and retried
    _never_twice_at_once(read_records(record))


def test_rtx_sessions_bound_what_they_hold(migrated):
    """Every rtx session has a lock timeout, an idle-in-transaction timeout, a statement timeout
    and TCP keepalives: a lock wait fails instead of hanging, and a session that stops talking
    inside a transaction is ended by the server (its locks released)."""
    from dataclasses import replace

    from runtime_executor.db.connection import connect

    settings = replace(migrated, lock_timeout=0.3, idle_in_transaction_timeout=1.0, statement_timeout=2.0)
    holder = connect(settings, "rtx-test-holder", autocommit=False)
    waiter = connect(settings, "rtx-test-waiter")
    try:
        shown = {
            name: waiter.execute(f"SHOW {name}").fetchone()[0]
            for name in (
                "lock_timeout",
                "idle_in_transaction_session_timeout",
                "statement_timeout",
                "tcp_keepalives_idle",
            )
        }
        assert shown == {
            "lock_timeout": "300ms",
            "idle_in_transaction_session_timeout": "1s",
            "statement_timeout": "2s",
            "tcp_keepalives_idle": "5",
        }
        holder.execute("SELECT pg_advisory_xact_lock(42)")
        started = time.monotonic()
        try:
            waiter.execute("SELECT pg_advisory_xact_lock(42)")
        except psycopg.errors.LockNotAvailable:
            pass
        else:
            raise AssertionError("the lock wait did not time out")
        assert time.monotonic() - started < 2
        # the holder stays idle inside its transaction: the server ends it and frees the lock
        wait_for(
            lambda: waiter.execute("SELECT pg_try_advisory_lock(42)").fetchone()[0],
            10,
            what="the idle session to end",
        )
        try:
            holder.execute("SELECT 1")
        except psycopg.errors.IdleInTransactionSessionTimeout:
            assert holder.broken  # Database closes it and reconnects on next use
        else:
            raise AssertionError("the idle-in-transaction session was not ended")
    finally:
        holder.close()
        waiter.close()
