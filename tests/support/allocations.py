"""Insert allocations straight into the table (what the shim does), for tests without a scheduler."""

from __future__ import annotations

import json
import uuid
from typing import Any

from runtime_executor.db.connection import Database
from runtime_executor.db.gateway import Gateway


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
    scheduler_job_id: int | None = None,
    max_running: int | None = None,
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
                scheduler_job_id=scheduler_job_id,
                max_running=max_running,
                reason=None,
            )
            ids.append(allocation_id)
    return ids


def lock_rows(gw: Gateway, ids: list[str]) -> list[tuple[str, Any]]:
    """(ctid, id) of these allocations, locked FOR UPDATE in id order, as the allocator's claim does."""
    cur = gw.conn.execute(
        f'SELECT ctid::text, id FROM "{gw.schema}".allocations WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE',
        (ids,),
    )
    return cur.fetchall()


def assign_to(gw: Gateway, ids: list[str], runner_id: str) -> int:
    """What an allocator pass does for these rows, in the caller's transaction: lock them (the
    claim), then the allocator's own guarded ``assign`` statement. Returns how many were assigned."""
    rows = lock_rows(gw, ids)
    return gw.assign([r[0] for r in rows], [r[1] for r in rows], [runner_id] * len(rows))
