"""The shim hands rtx-decided failures to the task-log writer without letting it touch sync().

Here Airflow's own database has no such task instance (the workloads are built by hand), so every
write fails: the outcomes must still be reported, exactly once, and sync() must not raise.
"""

from __future__ import annotations

import pytest
from airflow.utils.state import TaskInstanceState

from runtime_executor import airflow_compat as compat
from tests.integration.conftest import queue_in_session, register_runner, start_on_runner, task_workload
from tests.support.daemons import wait_for

pytestmark = pytest.mark.skipif(
    not compat.PRE_ASSIGNS_EXTERNAL_ID, reason=f"Airflow {compat.AIRFLOW_VERSION} pre-assigns no executor ids"
)


def test_a_task_log_that_cannot_be_written_never_fails_sync(make_executor, engine, rtx_db, rtx):
    executor = make_executor()
    bad = task_workload(task_id="greedy", executor_config={"runtime": {"slots": 65}})
    lost = task_workload(task_id="stranded", executor_config={"runtime": {"slots": 1}})
    ran = task_workload(task_id="crashed", executor_config={"runtime": {"slots": 1}})
    queue_in_session(executor, engine, bad, lost, ran)
    runner = register_runner(rtx_db)
    for workload in (lost, ran):
        start_on_runner(rtx_db, workload.ti.external_executor_id, runner)
    rtx.rows(
        "UPDATE {schema}.allocations SET state = 'lost', reason = 'runner r1 stopped heartbeating' WHERE id = %s",
        (lost.ti.external_executor_id,),
    )
    rtx.rows(
        "UPDATE {schema}.allocations SET state = 'failed', process_started_at = now(),"
        " reason = 'task process exited with code 1' WHERE id = %s",
        (ran.ti.external_executor_id,),
    )

    executor.sync()
    events = executor.get_event_buffer()
    assert {key: state for key, (state, _) in events.items()} == {
        bad.ti.key: TaskInstanceState.FAILED,
        lost.ti.key: TaskInstanceState.FAILED,
        ran.ti.key: TaskInstanceState.FAILED,
    }
    # the two only rtx can explain were tried (and could not be written); the one that ran was not tried
    writer = executor._failure_log
    wait_for(lambda: writer.dropped == 2, 30, what="both writes tried")
    assert writer.written == 0 and not writer._pending
    executor.sync()
    assert executor.get_event_buffer() == {}  # reported once
    assert {r["reported_state"] for r in rtx.rows("SELECT reported_state FROM {schema}.allocations")} == {
        "failed",
        "lost",
    }
