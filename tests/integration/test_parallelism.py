"""[core] parallelism held by the allocators (allocator/parallelism.py): racing allocators never let
one scheduler have more than its ``max_running`` allocations assigned or running, and use all of it."""

from __future__ import annotations

import sys

from testing.daemons import Daemon, daemon_env, query, wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import assert_never_overcommitted

CAPS = {7: 6, 8: 20}  # scheduler job id -> its parallelism
PER_SCHEDULER = 200


def _most_at_once(db_url: str) -> dict[int | None, int]:
    """Replay the audit log: the most allocations of each scheduler assigned or running at once."""
    job_of = {
        r[0]: r[1]
        for r in query(db_url, "SELECT id::text, scheduler_job_id FROM runtime_executor.allocations")
    }
    events = query(
        db_url,
        "SELECT allocation_id::text, from_state, to_state FROM runtime_executor.allocation_events ORDER BY id",
    )
    holding = {"assigned", "running"}
    now: dict[int | None, int] = {}
    most: dict[int | None, int] = {}
    for allocation, from_state, to_state in events:
        was, held = from_state in holding, to_state in holding
        if was == held:
            continue
        job = job_of[allocation]
        now[job] = now.get(job, 0) + (1 if held else -1)
        most[job] = max(most.get(job, 0), now[job])
    return most


def test_racing_allocators_hold_each_schedulers_parallelism(db, daemons, tmp_path):
    # 20 runners x 8 slots: room for 160 at once, far more than either scheduler may run
    sims = Daemon(
        "sim-runners",
        [sys.executable, "-m", "testing.sim_runners", "--count", "20", "--slots", "8", "--hold", "0.05"],
        daemon_env(daemons.db_url),
        tmp_path,
    )
    daemons.started.append(sims)
    wait_for(lambda: query(daemons.db_url, "SELECT count(*) FROM runtime_executor.runners")[0][0] == 20, 60)
    for i in range(3):
        daemons.allocator(name=f"allocator-{i}", RTX_ALLOCATOR_BATCH_SIZE="50")
    for job, cap in CAPS.items():
        insert_allocations(db, PER_SCHEDULER, dag_id=f"job{job}", scheduler_job_id=job, max_running=cap)
    uncapped = insert_allocations(db, 100, dag_id="old-shim")  # no max_running: placed as before
    total = len(CAPS) * PER_SCHEDULER + len(uncapped)
    wait_for(
        lambda: (
            query(
                daemons.db_url, "SELECT count(*) FROM runtime_executor.allocations WHERE state = 'succeeded'"
            )[0][0]
            == total
        ),
        180,
        interval=0.5,
        what=f"{total} allocations to finish",
    )
    most = _most_at_once(daemons.db_url)
    for job, cap in CAPS.items():
        assert most[job] == cap, f"scheduler {job}: at most {most[job]} at once, parallelism {cap}"
    assert most[None] > max(CAPS.values())  # the uncapped rows were not held to anyone's parallelism
    assert_never_overcommitted(daemons.db_url)
