"""Insert allocations straight into the table (what the shim does), for tests without a scheduler."""

from __future__ import annotations

import json
import uuid
from typing import Any

from runtime_executor.db.connection import Database


def insert_allocations(
    db: Database,
    count: int = 1,
    *,
    workload: dict[str, Any] | str | None = None,
    queue: str = "default",
    slots: int = 1,
    cpu: float = 0.0,
    memory_mb: int = 0,
    priority_weight: int = 1,
    dag_id: str = "test_dag",
) -> list[str]:
    ids = []
    payload = workload if isinstance(workload, str) else json.dumps(workload or {})
    with db.transaction() as gw:
        for i in range(count):
            allocation_id = str(uuid.uuid4())
            gw.insert_allocation(
                id=allocation_id,
                kind="task",
                dag_id=dag_id,
                task_id=f"task_{i}",
                run_id="manual__1",
                map_index=-1,
                try_number=1,
                callback_id=None,
                queue=queue,
                priority_weight=priority_weight,
                slots=slots,
                cpu=cpu,
                memory_mb=memory_mb,
                state="unassigned",
                workload=payload,
                scheduler_job_id=None,
                reason=None,
            )
            ids.append(allocation_id)
    return ids
