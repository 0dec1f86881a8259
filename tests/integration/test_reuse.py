"""Reused task processes (``--tasks-per-process``, runner/spares.py): real runners, real Postgres.

Each task (tests.support.fake_task) records its pid, so a test can tell which ran in the same process.
"""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import urlsplit

import psutil

from runner import task_entry
from runner.spares import SparePool
from testing.daemons import FAKE_TASK, query, wait_for
from testing.proxy import TcpProxy
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}


def _runner(daemons, *args: str, tasks_per_process: int = 5, name: str = "r1", **env: str):
    daemons.allocator(**FAST)
    runner = daemons.runner(
        "--slots", "1", "--tasks-per-process", str(tasks_per_process), *args, name=name, **FAST, **env
    )
    wait_runners(daemons.db_url, 1)
    return runner


def _run(db, daemons, **workload) -> str:
    """One task, run to its end: its allocation id."""
    [task] = insert_allocations(db, 1, workload=workload)
    wait_states(daemons.db_url, [task], DONE)
    return task


def _pid_of(record, task) -> int:
    [pid] = wait_for(lambda: [r[3] for r in read_records(record) if r[0] == "start" and r[1] == task], 20)
    return pid


def _row(db_url, task) -> tuple:
    return query(
        db_url,
        "SELECT state, exit_code, reason FROM runtime_executor.allocations WHERE id = %(a)s",
        {"a": task},
    )[0]


def test_a_spare_runs_tasks_in_turn_and_no_task_sees_the_one_before(db, daemons, tmp_path):
    record, first_env, second_env = tmp_path / "record.txt", tmp_path / "a.json", tmp_path / "b.json"
    _runner(daemons)
    first = _run(db, daemons, record=str(record), env_dump=str(first_env), set_env={"LEFT_BY_A": "x"}, exit=3)
    second = _run(db, daemons, record=str(record), env_dump=str(second_env))
    assert _pid_of(record, first) == _pid_of(record, second)  # the same process
    # exit codes are the tasks' own, reported over the pipe
    assert _row(daemons.db_url, first)[:2] == ("failed", 3)
    assert _row(daemons.db_url, second)[:2] == ("succeeded", 0)
    env = json.loads(second_env.read_text())
    assert env["RTX_ALLOCATION_ID"] == second
    assert "LEFT_BY_A" not in env and "RTX_DATABASE_URL" not in env
    assert first not in json.dumps(env)  # nothing of the first task's environment is left
    assert json.loads(first_env.read_text())["RTX_ALLOCATION_ID"] == first


def test_a_stopped_tasks_spare_is_killed_and_not_reused(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    _runner(daemons)
    warm = _run(db, daemons, record=str(record))
    # returns from SIGTERM after 0.2 s (exit 143): its spare reports, and must still not be reused
    [stopped] = insert_allocations(db, 1, workload={"record": str(record), "sleep": 60, "term_grace": 0.2})
    wait_states(daemons.db_url, [stopped], {"running"})
    pid = _pid_of(record, stopped)
    assert pid == _pid_of(record, warm)
    with db.transaction() as gw:
        gw.cancel_allocations([stopped])
    assert wait_states(daemons.db_url, [stopped], DONE) == {stopped: "cancelled"}
    wait_for(lambda: not psutil.pid_exists(pid), 10, what="the stopped task's spare to die")
    assert [r[0] for r in read_records(record) if r[1] == stopped] == ["start", "term", "end"]
    after = _run(db, daemons, record=str(record))
    assert _pid_of(record, after) != pid


def test_tasks_per_process_retires_the_spare(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    _runner(daemons, "--spare-processes", "1", tasks_per_process=3)
    ids = insert_allocations(db, 7, workload={"record": str(record)})  # one slot: one after the other
    assert set(wait_states(daemons.db_url, ids, DONE).values()) == {"succeeded"}
    pids = [r[3] for r in read_records(record) if r[0] == "start"]
    assert len(pids) == 7
    assert len(set(pids[0:3])) == len(set(pids[3:6])) == 1, pids
    assert len({pids[0], pids[3], pids[6]}) == 3, pids
    for pid in (pids[0], pids[3]):  # the third task was each one's last: it exited
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), 10, what=f"spare {pid} to exit")


def test_a_spare_that_grew_or_left_a_process_behind_is_retired(db, daemons, tmp_path):
    record, child_pid = tmp_path / "record.txt", tmp_path / "child.pid"
    _runner(daemons)
    leaky = _run(db, daemons, record=str(record), leak_mb=300)
    after_leak = _run(db, daemons, record=str(record))
    assert _pid_of(record, after_leak) != _pid_of(record, leaky)
    parent = _run(db, daemons, record=str(record), leave_child=str(child_pid))
    after_child = _run(db, daemons, record=str(record))
    assert _pid_of(record, after_child) != _pid_of(record, parent)
    assert {_row(daemons.db_url, t)[0] for t in (leaky, after_leak, parent, after_child)} == {"succeeded"}
    child = int(child_pid.read_text())
    wait_for(lambda: not psutil.pid_exists(child), 10, what="the process the task left to be killed")


def test_runner_killed_kills_a_task_in_a_reused_spare(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    runner = _runner(daemons)
    warm = _run(db, daemons, record=str(record))
    [long] = insert_allocations(db, 1, workload={"record": str(record), "sleep": 60})
    wait_states(daemons.db_url, [long], {"running"})
    pid = _pid_of(record, long)
    assert pid == _pid_of(record, warm)
    os.kill(runner.pid, signal.SIGKILL)  # the runner process only, not its process group
    wait_for(lambda: not psutil.pid_exists(pid), 10, what="the task to die with its runner")


def test_fencing_kills_a_task_in_a_reused_spare(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    parts = urlsplit(daemons.db_url)
    proxy = TcpProxy(parts.hostname, parts.port)
    try:
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        _runner(daemons, name="cut-off", RTX_DATABASE_URL=proxied)
        warm = _run(db, daemons, record=str(record))
        # ignores SIGTERM for a minute: only the fencing SIGKILL ends it
        [long] = insert_allocations(db, 1, workload={"record": str(record), "sleep": 60, "term_grace": 60})
        wait_states(daemons.db_url, [long], {"running"})
        pid = _pid_of(record, long)
        assert pid == _pid_of(record, warm)
        proxy.cut()
        wait_for(lambda: not psutil.pid_exists(pid), 4, interval=0.01, what="the fenced task to die")
        assert wait_states(daemons.db_url, [long], {"lost"}, timeout=15) == {long: "lost"}
        assert "end" not in [r[0] for r in read_records(record) if r[1] == long]
    finally:
        proxy.close()


def test_a_task_that_raises_leaves_its_error_and_the_spare_runs_the_next(monkeypatch):
    """The pool alone (real fork server, no runner): an exception in the task is its error line
    (task_entry.take_error) and exit code 1, reported over the pipe; the same process runs on."""
    monkeypatch.setenv("RTX_TASK_ENTRY", FAKE_TASK)
    pool = SparePool(1, slots=1, tasks_per_process=3)
    pool.start()
    try:
        codes, pids = [], []
        for i, workload in enumerate(["not json", "{}", "{}"]):
            spare = pool.launch(FAKE_TASK, workload, {"RTX_ALLOCATION_ID": f"reuse-test-{i}"}, None, "t")
            pids.append(spare.pid)
            if spare.reporting:
                assert spare.conn.poll(20)
                report = pool.report(spare)
                codes.append(report.code)
                assert pool.finish(spare, report, stopped=False)
            else:  # the third: its last task, and so the process's exit code
                spare.process.join(20)
                codes.append(spare.process.exitcode)
        assert codes == [1, 0, 0]
        assert len(set(pids)) == 1
        assert task_entry.take_error("reuse-test-0").startswith("JSONDecodeError: ")
        assert task_entry.take_error("reuse-test-1") is None
    finally:
        pool.close()
