"""Soak (``make soak``, not in ``make test``): thousands of short tasks through two allocators and
three runners while a chaos loop SIGKILLs and restarts a runner every few seconds. At the end every
allocation is terminal, none started twice, and no two runs of one allocation overlapped.

Knobs: RTX_SOAK_TASKS (default 3000), RTX_SOAK_CHAOS_EVERY (seconds, default 4).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter

from testing.daemons import query
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, assert_never_overcommitted, read_records, wait_runners

TERMINAL = ("succeeded", "failed", "lost", "cancelled")


def test_soak_with_a_runner_killed_every_few_seconds(db, daemons, tmp_path):
    total = int(os.environ.get("RTX_SOAK_TASKS", "3000"))
    chaos_every = float(os.environ.get("RTX_SOAK_CHAOS_EVERY", "4"))
    record = tmp_path / "record.txt"
    for i in range(2):
        daemons.allocator(name=f"allocator-{i}", **FAST)
    runners = {f"r{i}": daemons.runner("--slots", "8", name=f"r{i}", **FAST) for i in range(3)}
    wait_runners(daemons.db_url, 3)
    rng = random.Random(5)
    started = time.monotonic()
    kills, inserted, next_chaos = 0, 0, time.monotonic() + chaos_every

    def pending() -> int:
        return query(
            daemons.db_url,
            "SELECT count(*) FROM runtime_executor.allocations WHERE state <> ALL(%(t)s)",
            {"t": list(TERMINAL)},
        )[0][0]

    deadline = time.monotonic() + 900
    while inserted < total or pending():
        assert time.monotonic() < deadline, "soak did not finish in 15 minutes"
        if inserted < total:  # about 250 tasks/s offered
            batch = min(50, total - inserted)
            insert_allocations(
                db, batch, workload={"sleep": rng.choice([0, 0.05, 0.2]), "record": str(record)}
            )
            inserted += batch
        if time.monotonic() >= next_chaos:
            name = rng.choice(sorted(runners))
            runners[name].kill()
            kills += 1
            runners[name] = daemons.runner("--slots", "8", name=name, **FAST)
            next_chaos = time.monotonic() + chaos_every
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    states = Counter(
        dict(query(daemons.db_url, "SELECT state, count(*) FROM runtime_executor.allocations GROUP BY state"))
    )
    records = read_records(record)
    starts = Counter(r[1] for r in records if r[0] == "start")
    assert sum(states.values()) == total
    assert max(starts.values()) == 1  # no allocation ever started twice
    # every succeeded allocation started exactly once and ended; lost ones were cut off by a kill
    succeeded = {
        r[0]
        for r in query(
            daemons.db_url, "SELECT id::text FROM runtime_executor.allocations WHERE state = 'succeeded'"
        )
    }
    assert succeeded <= set(starts)
    assert_never_overcommitted(daemons.db_url)
    summary = {
        "tasks": total,
        "runner_kills": kills,
        "seconds": round(elapsed, 1),
        "states": dict(states),
        "max_starts_per_allocation": max(starts.values()),
    }
    print("SOAK " + json.dumps(summary))
    (tmp_path / "soak.json").write_text(json.dumps(summary))
