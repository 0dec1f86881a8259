"""The failure model, proven by killing real processes (DESIGN.md "Failure model").

Every test records each task start (tests.support.fake_task) and asserts zero lost and zero
duplicated executions: no allocation runs twice at the same time, and every one ends terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from urllib.parse import urlsplit

import psutil
import pytest

from testing.daemons import query, wait_for
from testing.proxy import TcpProxy
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}


def _never_twice_at_once(records) -> None:
    """Per allocation, no two runs overlap in time (a run = start .. end, or .. forever if killed)."""
    runs: dict[str, list[tuple[float, float]]] = {}
    open_runs: dict[tuple[str, int], float] = {}
    for what, allocation, _runner, pid, at in sorted(records, key=lambda r: r[4]):
        if what not in ("start", "end"):
            continue
        if what == "start":
            open_runs[(allocation, pid)] = at
        else:
            runs.setdefault(allocation, []).append((open_runs.pop((allocation, pid)), at))
    for (allocation, pid), start in open_runs.items():
        alive = psutil.pid_exists(pid)
        assert not alive, f"task process {pid} of {allocation} still running after its runner was lost"
        runs.setdefault(allocation, []).append((start, start))  # killed; it ended before the next start
    for allocation, spans in runs.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"allocation {allocation} ran twice at once"


def _pids_of(records, allocation_ids) -> list[int]:
    return [r[3] for r in records if r[0] == "start" and r[1] in allocation_ids]


def test_kill9_runner_rescues_its_work(db, daemons, tmp_path):
    """Promise 1: a runner killed with SIGKILL: after the lease timeout, what it had started is lost
    (reported failed, with the reason), what it had not started goes back and runs elsewhere; its
    task processes die with it."""
    record = tmp_path / "record.txt"
    daemons.allocator(**FAST)
    victim = daemons.runner("--slots", "4", name="victim", **FAST)
    [victim_id] = wait_runners(daemons.db_url, 1)
    running = insert_allocations(db, 2, workload={"sleep": 60, "record": str(record)})
    wait_states(daemons.db_url, running, {"running"})
    wait_for(lambda: len(_pids_of(read_records(record), running)) == 2, 20, what="task processes")
    # freeze the victim so that what it is assigned next stays assigned-not-started
    os.kill(victim.pid, signal.SIGSTOP)
    waiting = insert_allocations(db, 2, workload={"record": str(record)})
    assert wait_states(daemons.db_url, waiting, {"assigned"}) == dict.fromkeys(waiting, "assigned")
    victim.kill()  # SIGKILL while frozen
    t_kill = time.monotonic()
    daemons.runner("--slots", "4", name="survivor", **FAST)

    lost = wait_states(daemons.db_url, running, {"lost"}, timeout=30)
    assert set(lost.values()) == {"lost"}
    assert time.monotonic() - t_kill < 3 + 3  # lease timeout plus a rescue pass or two
    reasons = {
        r[0]
        for r in query(
            daemons.db_url,
            "SELECT reason FROM runtime_executor.allocations WHERE id = ANY(%(i)s::uuid[])",
            {"i": running},
        )
    }
    assert reasons == {f"runner victim ({victim_id}) stopped heartbeating; its lease expired"}
    # the assigned-not-started ones never ran on the victim: they went back and ran on the survivor
    assert set(wait_states(daemons.db_url, waiting, DONE).values()) == {"succeeded"}
    survivor_of = dict(
        query(
            daemons.db_url,
            "SELECT id::text, runner_id::text FROM runtime_executor.allocations WHERE id = ANY(%(i)s::uuid[])",
            {"i": waiting},
        )
    )
    assert victim_id not in survivor_of.values()
    records = read_records(record)
    for pid in _pids_of(records, running):
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), 10, what=f"task {pid} to die with its runner")
    _never_twice_at_once(records)
    assert query(
        daemons.db_url, "SELECT state FROM runtime_executor.runners WHERE id = %(r)s", {"r": victim_id}
    ) == [("lost",)]


@contextlib.contextmanager
def _task_on_a_runner_behind_a_proxy(db, daemons, record, *, slots: int, **workload):
    """An allocator, a runner named ``cut-off`` that reaches the database only through a TCP proxy
    the test can cut, and one 60 s task running on it: yields (proxy, runner id, task, task pid)."""
    parts = urlsplit(daemons.db_url)
    proxy = TcpProxy(parts.hostname, parts.port)
    try:
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        daemons.allocator(**FAST)
        daemons.runner("--slots", str(slots), name="cut-off", RTX_DATABASE_URL=proxied, **FAST)
        [runner_id] = wait_runners(daemons.db_url, 1)
        [task] = insert_allocations(db, 1, workload={"sleep": 60, "record": str(record), **workload})
        wait_states(daemons.db_url, [task], {"running"})
        [pid] = wait_for(lambda: _pids_of(read_records(record), [task]), 20)
        yield proxy, runner_id, task, pid
    finally:
        proxy.close()


def test_runner_cut_off_from_the_database_fences_itself(db, daemons, tmp_path, pg_admin_url):
    """Promise 2: a runner that cannot renew its lease stops its tasks before the lease expires;
    the allocator's rescue happens once; back online, the runner registers afresh and works."""
    record = tmp_path / "record.txt"
    with _task_on_a_runner_behind_a_proxy(db, daemons, record, slots=2) as (proxy, old_id, task, pid):
        proxy.cut()
        t_cut = time.monotonic()
        wait_for(lambda: not psutil.pid_exists(pid), 10, what="the fenced task to be stopped")
        t_fenced = time.monotonic()
        lost = wait_states(daemons.db_url, [task], {"lost"}, timeout=15)
        assert lost == {task: "lost"}
        assert t_fenced - t_cut <= 3 + 1  # stopped by the time its lease (3 s) ran out
        proxy.restore()
        new_ids = wait_for(
            lambda: [
                r[0]
                for r in query(
                    daemons.db_url, "SELECT id::text FROM runtime_executor.runners WHERE state = 'active'"
                )
                if r[0] != old_id
            ],
            30,
            what="the runner to register again",
        )
        assert new_ids
        [after] = insert_allocations(db, 1, workload={"record": str(record)})
        assert wait_states(daemons.db_url, [after], DONE) == {after: "succeeded"}
        events = query(
            daemons.db_url,
            "SELECT to_state FROM runtime_executor.allocation_events WHERE allocation_id = %(a)s ORDER BY id",
            {"a": task},
        )
        assert [e[0] for e in events].count("lost") == 1  # rescued once
        _never_twice_at_once(read_records(record))


def test_fencing_kills_the_task_before_the_database_calls_its_lease_expired(db, daemons, tmp_path):
    """Fencing completes before the database can declare the lease expired (issue 11, item 6).

    A runner is cut off from the database while it runs a task that ignores SIGTERM for a minute
    (only the runner's SIGKILL ends it). Airflow with retry_delay=0 queues the retry the moment the
    row is lost: the test plays the scheduler and inserts the retry as soon as it sees ``lost``; a
    healthy runner starts it at once. The old process must have been seen dead before the lease
    expiry on the database clock (``runners.lease_expires_at``, the same host clock as the tasks'
    own timestamps), and the retry must start after both."""
    record = tmp_path / "record.txt"
    with _task_on_a_runner_behind_a_proxy(db, daemons, record, slots=1, term_grace=60) as (
        proxy,
        old_runner,
        task,
        pid,
    ):
        daemons.runner("--slots", "1", name="healthy", **FAST)
        wait_runners(daemons.db_url, 2)
        proxy.cut()
        seen_dead = None
        deadline = time.monotonic() + 20
        while True:  # the scheduler's side: retry_delay=0, the retry is queued the moment it is lost
            if seen_dead is None and not psutil.pid_exists(pid):
                seen_dead = time.time()
            [(state,)] = query(
                daemons.db_url, "SELECT state FROM runtime_executor.allocations WHERE id = %(a)s", {"a": task}
            )
            if state == "lost":
                [retry] = insert_allocations(db, 1, workload={"record": str(record)})
                break
            assert time.monotonic() < deadline, "the cut-off runner's task was never rescued"
            time.sleep(0.01)
        if seen_dead is None:  # alive when the row was lost: how much longer (before the fix, ~5 s)
            wait_for(lambda: not psutil.pid_exists(pid), 15, interval=0.01, what="the old task to die")
            seen_dead = time.time()
        assert wait_states(daemons.db_url, [retry], DONE) == {retry: "succeeded"}
        [(lease_expired_at, lost_at)] = query(
            daemons.db_url,
            "SELECT extract(epoch FROM r.lease_expires_at)::float8, extract(epoch FROM e.at)::float8"
            "  FROM runtime_executor.runners r, runtime_executor.allocation_events e"
            " WHERE r.id = %(r)s AND e.allocation_id = %(a)s AND e.to_state = 'lost'",
            {"r": old_runner, "a": task},
        )
        records = read_records(record)
        old_runs = {what: at for what, allocation, _r, _p, at in records if allocation == task}
        [retry_start] = [
            at for what, allocation, *_rest, at in records if allocation == retry and what == "start"
        ]
        print(
            f"SIGTERM {lease_expired_at - old_runs['term']:.2f} s and death seen {lease_expired_at - seen_dead:.2f} s"
            f" before the database's lease expiry; lost {lost_at - lease_expired_at:.2f} s after it;"
            f" retry started {retry_start - seen_dead:.2f} s after the death"
        )
        assert "end" not in old_runs  # it ignored SIGTERM: the runner's SIGKILL ended it
        assert seen_dead < lease_expired_at, (
            f"the old process was alive {seen_dead - lease_expired_at:.2f} s past the database's lease expiry"
        )
        assert lease_expired_at <= lost_at < retry_start
        _never_twice_at_once(records)


@pytest.fixture
def own_cluster(tmp_path):
    from testing.pgcluster import PgCluster, create_database

    cluster = PgCluster(tmp_path / "pg").start()
    create_database(cluster.admin_url, "rtx")
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_postgres_restart_loses_nothing(own_cluster, tmp_path):
    """Promise 3: Postgres restarted mid-run: daemons reconnect; a task that finished while the
    database was down keeps its outcome and reports it once the database is back."""
    import psycopg

    from runtime_executor.db.connection import Database
    from runtime_executor.db.migrate import migrate
    from runtime_executor.settings import Settings
    from testing.daemons import Daemons

    url = own_cluster.url("rtx")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn, "runtime_executor")
    record = tmp_path / "record.txt"
    d = Daemons(url, tmp_path)
    slow = {**FAST, "RTX_LEASE_TIMEOUT": "20"}  # the outage is shorter than the lease
    db = Database(Settings(database_url=url), "test")
    try:
        d.allocator(**slow)
        d.runner("--slots", "4", name="r1", **slow)
        wait_runners(url, 1)
        ids = insert_allocations(db, 3, workload={"sleep": 2, "record": str(record)})
        wait_states(url, ids, {"running"})
        db.close()
        own_cluster.stop()
        time.sleep(3)  # the tasks finish while the database is down
        own_cluster.start()
        assert set(wait_states(url, ids, DONE, timeout=40).values()) == {"succeeded"}
        more = insert_allocations(db, 3, workload={"record": str(record)})
        assert set(wait_states(url, more, DONE, timeout=30).values()) == {"succeeded"}
        starts = [r[1] for r in read_records(record) if r[0] == "start"]
        assert sorted(starts) == sorted(ids + more)  # each once
        assert "database unavailable" in d.logs()
    except Exception:
        print(d.logs()[-20000:])
        raise
    finally:
        db.close()
        d.stop_all()


def test_allocator_killed_mid_pass_leaves_nothing_claimed(db, daemons, tmp_path):
    """Promise 4: kill -9 one of two allocators while work flows: everything is placed exactly once."""
    record = tmp_path / "record.txt"
    first = daemons.allocator(name="allocator-1", **FAST)
    daemons.allocator(name="allocator-2", **FAST)
    daemons.runner("--slots", "16", name="r1", **FAST)
    daemons.runner("--slots", "16", name="r2", **FAST)
    wait_runners(daemons.db_url, 2)
    ids = []
    for i in range(10):
        ids += insert_allocations(db, 20, workload={"record": str(record)})
        if i == 3:
            first.kill()
    assert set(wait_states(daemons.db_url, ids, DONE, timeout=90).values()) == {"succeeded"}
    starts = [r[1] for r in read_records(record) if r[0] == "start"]
    assert sorted(starts) == sorted(ids)
    assigned_twice = query(
        daemons.db_url,
        "SELECT allocation_id FROM runtime_executor.allocation_events WHERE to_state = 'assigned'"
        " GROUP BY allocation_id HAVING count(*) > 1",
    )
    assert assigned_twice == []


def _one_long_task(db, daemons, tmp_path) -> tuple[str, int]:
    """An allocator, one runner, and one task that runs for a minute: (allocation id, task pid)."""
    daemons.allocator(**FAST)
    daemons.runner(name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    record = tmp_path / "record.txt"
    [task] = insert_allocations(db, 1, workload={"sleep": 60, "record": str(record)})
    [pid] = wait_for(lambda: _pids_of(read_records(record), [task]), 20)
    return task, pid


def test_task_killed_by_a_signal_is_reported_with_it(db, daemons, tmp_path):
    """Promise 8 (signal part): a task killed by the kernel is reported failed naming the signal."""
    task, pid = _one_long_task(db, daemons, tmp_path)
    os.kill(pid, signal.SIGKILL)
    assert wait_states(daemons.db_url, [task], DONE) == {task: "failed"}
    reason = query(
        daemons.db_url, "SELECT reason FROM runtime_executor.allocations WHERE id = %(a)s", {"a": task}
    )[0][0]
    assert reason == "task process killed by signal SIGKILL"


def test_revoked_running_task_is_stopped(db, daemons, tmp_path):
    """Promise 7: revoking a running allocation stops its process; nothing is reported."""
    task, pid = _one_long_task(db, daemons, tmp_path)
    with db.transaction() as gw:
        gw.cancel_allocations([task])
    assert wait_states(daemons.db_url, [task], DONE) == {task: "cancelled"}
    wait_for(lambda: not psutil.pid_exists(pid), 10, what="the revoked task to stop")
    with db.transaction() as gw:
        assert gw.report_outcomes(None) == []


@pytest.mark.parametrize("start_retries", [3, 0])
def test_a_running_row_without_a_process_is_placed_again_or_failed(db, daemons, tmp_path, start_retries):
    """Promise 9: a row 'running' on a live runner that has no process for it (the reply to its
    start was lost with the connection) is not left running forever: within a lease period it goes
    back for placement, since none of its code ran (a start retry, not an Airflow retry), and runs;
    with no start retries left it fails, naming why."""
    record = tmp_path / "record.txt"
    daemons.runner(name="r1", RTX_START_RETRIES=str(start_retries), **FAST)
    [runner_id] = wait_runners(daemons.db_url, 1)
    [orphan] = insert_allocations(db, 1, workload={"record": str(record)})  # no allocator yet
    with db.transaction() as gw:  # what the runner's lost start would have left behind
        gw.conn.execute(
            "UPDATE runtime_executor.allocations SET state = 'running', runner_id = %s,"
            " started_at = clock_timestamp() - interval '1 minute' WHERE id = %s",
            [runner_id, orphan],
        )
    daemons.allocator(**FAST)
    expected = "succeeded" if start_retries else "failed"
    assert wait_states(daemons.db_url, [orphan], DONE, timeout=20) == {orphan: expected}
    [(reason, failures)] = query(
        daemons.db_url,
        "SELECT reason, start_failures FROM runtime_executor.allocations WHERE id = %(a)s",
        {"a": orphan},
    )
    assert failures == [f"attempt 1 (runner {runner_id}): the runner had no process for it"]
    if start_retries:
        assert reason is None
        assert [r[1] for r in read_records(record) if r[0] == "start"] == [orphan]
    else:
        assert reason == f"the task never started (1 failed starts): {failures[0]}"
        assert read_records(record) == []
