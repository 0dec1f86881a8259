"""The shim's task path on whichever supported Airflow is installed, 3.1 included.

test_executor_shim.py builds workloads as 3.2 and 3.3 do (a pre-assigned executor id, callbacks)
and so skips on 3.1; this file builds them as the installed Airflow does. ``make test-compat`` runs
it under every supported version.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from airflow.executors import workloads
from airflow.utils.state import TaskInstanceState

from runtime_executor import airflow_compat as compat
from tests.integration.conftest import (
    TOKEN,
    finish_on_runner,
    queue_in_session,
    register_runner,
    start_on_runner,
)


def _workload(**ti_fields):
    """An ExecuteTask as the installed scheduler builds it (``workloads.TaskInstance`` is the TI
    model's name in 3.1 and an alias of TaskInstanceDTO in 3.2 and 3.3)."""
    ti = workloads.TaskInstance(
        id=uuid.uuid4(),
        dag_id="rtx_dag",
        task_id="task",
        run_id="manual__2026-01-01",
        try_number=1,
        dag_version_id=uuid.uuid4(),
        pool_slots=1,
        priority_weight=1,
        queue="default",
        executor_config={"runtime": {"cpu": 0.5, "memory": "256MB", "slots": 2}},
        **ti_fields,
    )
    return workloads.ExecuteTask(
        ti=ti,
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        token=TOKEN,
        dag_rel_path=Path("rtx_dag.py"),
        log_path="dag_id=rtx_dag/run_id=manual__2026-01-01/task_id=task/attempt=1.log",
    )


def test_a_task_is_queued_placed_and_reported_and_the_scheduler_learns_its_allocation_id(
    make_executor, engine, rtx_db, rtx
):
    executor = make_executor()
    pre_assigned = str(uuid.uuid4())
    workload = _workload(external_executor_id=pre_assigned) if compat.PRE_ASSIGNS_EXTERNAL_ID else _workload()
    key = workload.ti.key
    queue_in_session(executor, engine, workload)
    assert key in executor.running

    [row] = rtx.rows("SELECT id, state, slots, cpu, memory_mb FROM {schema}.allocations")
    allocation_id = str(row["id"])
    assert (row["state"], row["slots"], row["cpu"], row["memory_mb"]) == ("unassigned", 2, 0.5, 256)
    if compat.PRE_ASSIGNS_EXTERNAL_ID:  # 3.2+: the scheduler's id, already on the task instance
        assert allocation_id == pre_assigned
        assert executor.get_event_buffer() == {}
    else:  # 3.1: rtx's own id, handed to the scheduler at once (it stores it as external_executor_id)
        assert executor.get_event_buffer() == {key: (TaskInstanceState.QUEUED, allocation_id)}

    runner_id = register_runner(rtx_db)
    start_on_runner(rtx_db, allocation_id, runner_id)
    executor.sync()
    assert executor.get_event_buffer() == {}  # a start is no event: the id is known since queueing
    finish_on_runner(
        rtx_db, allocation_id, runner_id, "failed", 1, "task process exited with code 1: Boom: x"
    )
    executor.sync()
    state, info = executor.get_event_buffer()[key]
    assert state == TaskInstanceState.FAILED
    assert "Boom: x" in info
    assert key not in executor.running
