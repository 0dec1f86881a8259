"""Promise 5: the scheduler dies while a task runs; the new scheduler adopts the allocation and
reports its outcome. The task runs once."""

from __future__ import annotations

import signal
import time

import pytest

from testing.daemons import query, wait_for

pytestmark = pytest.mark.e2e

STACK_ENV = {
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "3",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "6",
}


def test_scheduler_killed_and_restarted_adopts_the_running_task(stack):
    airflow = stack.airflow
    run_id = airflow.trigger("rtx_long")
    url = airflow.database_url
    wait_for(
        lambda: (
            query(url, "SELECT state FROM runtime_executor.allocations WHERE dag_id = 'rtx_long'")
            == [("running",)]
        ),
        120,
        what="the task to run",
    )
    [(old_job,)] = query(
        url, "SELECT scheduler_job_id FROM runtime_executor.allocations WHERE dag_id = 'rtx_long'"
    )
    airflow.stop_component("scheduler", sig=signal.SIGKILL)
    time.sleep(7)  # past the health-check threshold: the old scheduler job is dead
    airflow.start_component("scheduler")
    try:
        assert airflow.wait_for_run("rtx_long", run_id, timeout=120) == "success"
    except Exception:
        print(stack.logs())
        raise

    # The task reports its own state to Airflow's API, so the run can be done a moment before the
    # runner has recorded the process's exit and the new scheduler's sync has reported it.
    def reported() -> list[tuple] | None:
        rows = query(
            url,
            "SELECT state, scheduler_job_id, reported_state, try_number"
            " FROM runtime_executor.allocations WHERE dag_id = 'rtx_long'",
        )
        return rows if rows and rows[0][2] in ("succeeded", "failed", "lost") else None

    rows = wait_for(reported, 30, what="the allocation's outcome to be reported")
    assert len(rows) == 1  # one allocation: the task was adopted, not rescheduled
    state, new_job, reported, try_number = rows[0]
    assert (state, reported, try_number) == ("succeeded", "succeeded", 1)
    assert new_job != old_job
    starts = query(
        url,
        "SELECT count(*) FROM runtime_executor.allocation_events e JOIN runtime_executor.allocations a"
        " ON a.id = e.allocation_id WHERE a.dag_id = 'rtx_long' AND e.to_state = 'running'",
    )
    assert starts == [(1,)]
    log = airflow.task_log("rtx_long", run_id, "long")
    assert "finished" in log
