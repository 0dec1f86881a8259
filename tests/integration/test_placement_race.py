"""Several allocators racing (issue 3): never over-commit, every allocation assigned exactly once."""

from __future__ import annotations

import random
import sys

from testing.daemons import Daemon, daemon_env, query, wait_for
from tests.support.fixtures import assert_never_overcommitted


def test_three_allocators_10000_allocations_50_runners(db, daemons, tmp_path):
    sims = Daemon(
        "sim-runners",
        [
            sys.executable,
            "-m",
            "testing.sim_runners",
            "--count",
            "50",
            "--slots",
            "8",
            "--cpu",
            "4",
            "--memory",
            "4096",
            "--hold",
            "0.02",
        ],
        daemon_env(daemons.db_url),
        tmp_path,
    )
    daemons.started.append(sims)
    wait_for(lambda: query(daemons.db_url, "SELECT count(*) FROM runtime_executor.runners")[0][0] == 50, 60)
    for i in range(3):
        daemons.allocator(name=f"allocator-{i}", RTX_ALLOCATOR_BATCH_SIZE="500", RTX_LOG_LEVEL="debug")
    rng = random.Random(7)
    with db.transaction() as gw:
        for n in range(10_000):
            gw.insert_allocation(
                id=f"00000000-0000-4000-8000-{n:012d}",
                kind="task",
                dag_id="race",
                task_id=f"t{n}",
                run_id="r",
                map_index=-1,
                try_number=1,
                callback_id=None,
                queue="default",
                priority_weight=rng.choice([1, 1, 1, 5]),
                slots=rng.choice([1, 1, 2, 4]),
                cpu=rng.choice([0.0, 0.5, 1.0, 2.0]),
                memory_mb=rng.choice([0, 256, 1024, 2048]),
                state="unassigned",
                workload="{}",
                scheduler_job_id=None,
                reason=None,
            )
    wait_for(
        lambda: (
            query(
                daemons.db_url, "SELECT count(*) FROM runtime_executor.allocations WHERE state = 'succeeded'"
            )[0][0]
            == 10_000
        ),
        300,
        interval=1,
        what="10,000 allocations to finish",
    )
    # exactly once: one assignment and one start per allocation in the audit log
    per_allocation = query(
        daemons.db_url,
        "SELECT count(*) FILTER (WHERE to_state = 'assigned'), count(*) FILTER (WHERE to_state = 'running')"
        " FROM runtime_executor.allocation_events GROUP BY allocation_id",
    )
    assert len(per_allocation) == 10_000
    assert set(per_allocation) == {(1, 1)}
    # all three allocators took part
    logs = [d.log() for d in daemons.started if d.name.startswith("allocator")]
    assert all('"event": "allocator starting"' in log for log in logs)
    assert_never_overcommitted(daemons.db_url)
