"""Resource usage: the runner samples its tasks' CPU and memory onto their allocations, warns once
when a task passes its memory reservation (runner log and the task's own Airflow log), stops it with
--enforce-memory, and explains a SIGKILL over the reservation as likely out of memory."""

from __future__ import annotations

import json
import os
import signal

from runner.service import describe_exit
from testing.daemons import query, wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}
FAST_USAGE = {**FAST, "RTX_USAGE_INTERVAL": "0.3"}
LOG_PATH = "dag_id=usage/run_id=manual__1/task_id=hog/attempt=1.log"


def usage(db_url: str, allocation_id: str) -> dict:
    rows = query(
        db_url,
        "SELECT state, cpu_percent, rss_mb, peak_rss_mb, reason FROM runtime_executor.allocations WHERE id = %(a)s",
        {"a": allocation_id},
    )
    return dict(zip(("state", "cpu_percent", "rss_mb", "peak_rss_mb", "reason"), rows[0], strict=True))


def over_reservation_warnings(runner_log: str, allocation_id: str) -> list[dict]:
    out = []
    for line in runner_log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            record.get("event") == "task over its memory reservation"
            and record.get("allocation_id") == allocation_id
        ):
            out.append(record)
    return out


def test_usage_is_sampled_and_an_over_reservation_warned_once(db, daemons, tmp_path):
    logs = tmp_path / "airflow-logs"
    task_log = logs / LOG_PATH
    task_log.parent.mkdir(parents=True)
    task_log.write_text('{"timestamp":"2026-01-01T00:00:00.000000Z","level":"info","event":"task started"}\n')
    daemons.allocator(**FAST)
    runner = daemons.runner(name="r1", AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(logs), **FAST_USAGE)
    wait_runners(daemons.db_url, 1)

    # 200 MB against a 64 MB reservation, without --enforce-memory: it runs to success
    [hog] = insert_allocations(
        db, 1, workload={"allocate_mb": 200, "hold": 2.5, "log_path": LOG_PATH}, memory_mb=64
    )
    row = wait_for(
        lambda: (u := usage(daemons.db_url, hog))["rss_mb"] is not None and u["rss_mb"] >= 180 and u,
        15,
        what="the task's memory on its allocation",
    )
    assert row["state"] == "running"
    assert row["peak_rss_mb"] >= row["rss_mb"]
    assert row["cpu_percent"] is not None and row["cpu_percent"] >= 0
    assert wait_states(daemons.db_url, [hog], DONE) == {hog: "succeeded"}
    final = usage(daemons.db_url, hog)
    assert 180 <= final["peak_rss_mb"] < 400 and final["reason"] is None

    # warned exactly once, in the runner's log and as one JSON line of the task's own log
    [warning] = over_reservation_warnings(runner.log(), hog)
    assert warning["level"] == "warning" and warning["memory_mb"] == 64 and warning["rss_mb"] > 64
    lines = task_log.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[1])
    assert set(record) >= {"timestamp", "level", "event", "logger"}
    assert record["level"] == "warning"
    assert "more than its reservation of 64 MB" in record["event"]
    assert record["timestamp"].endswith("Z")

    # a task without a log_path (or under its reservation) only gets the runner's log, if anything
    [quiet] = insert_allocations(db, 1, workload={"allocate_mb": 20, "hold": 1}, memory_mb=500)
    [nolog] = insert_allocations(db, 1, workload={"allocate_mb": 120, "hold": 1}, memory_mb=32)
    assert wait_states(daemons.db_url, [quiet, nolog], DONE) == {quiet: "succeeded", nolog: "succeeded"}
    assert over_reservation_warnings(runner.log(), quiet) == []
    assert len(over_reservation_warnings(runner.log(), nolog)) == 1
    assert len(task_log.read_text().splitlines()) == 2

    # killed by SIGKILL (as the kernel's OOM killer does) with its peak over the reservation
    record_file = tmp_path / "record.txt"
    [oom] = insert_allocations(
        db, 1, workload={"allocate_mb": 150, "hold": 60, "record": str(record_file)}, memory_mb=100
    )
    wait_for(lambda: (usage(daemons.db_url, oom)["peak_rss_mb"] or 0) >= 130, 15, what="peak memory")
    [pid] = [r[3] for r in read_records(record_file) if r[1] == oom]
    os.kill(pid, signal.SIGKILL)
    assert wait_states(daemons.db_url, [oom], DONE) == {oom: "failed"}
    reason = usage(daemons.db_url, oom)["reason"]
    assert reason.startswith("task process killed by signal SIGKILL (likely out of memory: peak memory ")
    assert reason.endswith("MB, reservation 100 MB)")


def test_enforce_memory_stops_a_task_over_its_reservation(db, daemons):
    daemons.allocator(**FAST)
    runner = daemons.runner("--enforce-memory", "--memory-margin", "20", name="r1", **FAST_USAGE)
    wait_runners(daemons.db_url, 1)
    [hog] = insert_allocations(db, 1, workload={"allocate_mb": 300, "hold": 60}, memory_mb=50)
    [fits] = insert_allocations(db, 1, workload={"allocate_mb": 30, "hold": 1.5}, memory_mb=200)
    assert wait_states(daemons.db_url, [hog, fits], DONE, timeout=20) == {hog: "failed", fits: "succeeded"}
    reason = usage(daemons.db_url, hog)["reason"]
    assert "over its memory reservation of 50 MB (+20%); stopped by --enforce-memory" in reason, reason
    assert reason.startswith("task used ") and reason.endswith("task process killed by signal SIGTERM")
    assert len(over_reservation_warnings(runner.log(), hog)) == 1


def test_describe_exit_names_memory_as_the_likely_cause():
    sigkill = -signal.SIGKILL
    assert describe_exit(sigkill, None) == ("failed", "task process killed by signal SIGKILL")
    assert describe_exit(sigkill, None, peak_rss_mb=900, memory_mb=1024) == (
        "failed",
        "task process killed by signal SIGKILL",
    )
    assert describe_exit(sigkill, None, peak_rss_mb=1024, memory_mb=1024)[1] == (
        "task process killed by signal SIGKILL (likely out of memory: peak memory 1024 MB, reservation 1024 MB)"
    )
    assert describe_exit(1, None, peak_rss_mb=300, oom_killed=True)[1] == (
        "task process exited with code 1 (likely out of memory: the kernel's OOM killer ran; peak memory 300 MB)"
    )
    # a task the runner stopped keeps the runner's reason
    assert describe_exit(sigkill, "revoked by the scheduler", peak_rss_mb=2000, memory_mb=1024)[1] == (
        "revoked by the scheduler: task process killed by signal SIGKILL"
    )
    assert describe_exit(0, None, peak_rss_mb=2000, memory_mb=1024) == ("succeeded", None)
