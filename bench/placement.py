"""Placement throughput and packing quality.

    make bench-placement        # or: python -m bench.placement --runners 1000 --requests 100000

1. Throughput: 1,000 runners and 100,000 pending requests (synthetic rows, no Airflow) in a real
   Postgres; one real ``rtx-allocator serve`` process places them. Placements/s = requests placed
   / time from the allocator's start-up log line to the last assignment (from the audit log).
2. Packing quality: MaxPackingStrategy on a mixed workload (arrival order, online) against
   first-fit-decreasing (offline: sorted largest first) on identical runners, and against the
   volume lower bound (for each dimension, total demand / runner capacity, rounded up).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

from allocator.model import Request, RunnerState
from allocator.strategies import get_strategy
from bench.common import allocations_in, bench_database, sql
from testing.daemons import Daemons, query, wait_for

RUNNER = {"slots": 128, "cpu": 64.0, "memory_mb": 262144}


def throughput(runners: int, requests: int, strategy: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rtx-bench-placement-"))
    with bench_database() as url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql("""INSERT INTO {schema}.runners (id, name, hostname, pid, queues, slots, cpu, memory_mb, lease_expires_at)
                   SELECT gen_random_uuid(), 'bench-' || i, 'bench', 0, ARRAY['default'], %(slots)s, %(cpu)s, %(mem)s,
                          clock_timestamp() + interval '1 hour'
                     FROM generate_series(1, %(n)s) AS i"""),
                {"n": runners, "slots": RUNNER["slots"], "cpu": RUNNER["cpu"], "mem": RUNNER["memory_mb"]},
            )
            conn.execute(
                sql("""INSERT INTO {schema}.allocations (id, dag_id, task_id, run_id, try_number, map_index, queue,
                                                          priority_weight, slots, cpu, memory_mb, workload)
                   SELECT gen_random_uuid(), 'bench', 't' || i, 'r', 1, -1, 'default', 1 + (i %% 3),
                          1, (ARRAY[0, 0.25, 0.5, 1])[1 + i %% 4], (ARRAY[0, 128, 512, 1024, 2048])[1 + i %% 5], '{}'
                     FROM generate_series(1, %(n)s) AS i"""),
                {"n": requests},
            )
            conn.execute(sql("ANALYZE {schema}.allocations"))
        daemons = Daemons(url, work)
        try:
            started = time.time()
            daemons.allocator(ALLOCATOR_STRATEGY=strategy)
            wait_for(
                lambda: allocations_in(url, "unassigned") == 0,
                600,
                interval=0.5,
                what="every request to be placed",
            )
        finally:
            daemons.stop_all()
        first, last = query(
            url,
            sql(
                "SELECT extract(epoch FROM min(at)), extract(epoch FROM max(at)) FROM {schema}.allocation_events"
                " WHERE to_state = 'assigned'"
            ),
        )[0]
        over = query(
            url,
            sql("""SELECT count(*) FROM (SELECT r.id FROM {schema}.runners r JOIN {schema}.allocations a ON a.runner_id = r.id
                GROUP BY r.id, r.slots, r.cpu, r.memory_mb
               HAVING sum(a.slots) > r.slots OR sum(a.cpu) > r.cpu + 1e-9 OR sum(a.memory_mb) > r.memory_mb) x"""),
        )[0][0]
    seconds = float(last) - float(first)
    return {
        "runners": runners,
        "requests": requests,
        "strategy": strategy,
        "placing_seconds": round(seconds, 2),
        "placements_per_s": round(requests / seconds),
        "startup_to_done_seconds": round(float(last) - started, 2),
        "overcommitted_runners": over,
    }


def _first_fit_decreasing(reqs: list[Request], cap: dict) -> int:
    bins: list[list[float]] = []
    for r in sorted(
        reqs,
        key=lambda r: r.slots / cap["slots"] + r.cpu / cap["cpu"] + r.memory_mb / cap["memory_mb"],
        reverse=True,
    ):
        for b in bins:
            if (
                b[0] + r.slots <= cap["slots"]
                and b[1] + r.cpu <= cap["cpu"] + 1e-9
                and b[2] + r.memory_mb <= cap["memory_mb"]
            ):
                b[0] += r.slots
                b[1] += r.cpu
                b[2] += r.memory_mb
                break
        else:
            bins.append([r.slots, r.cpu, r.memory_mb])
    return len(bins)


def packing(requests: int, seed: int = 11) -> dict:
    rng = random.Random(seed)
    cap = {"slots": 16, "cpu": 8.0, "memory_mb": 16384}
    reqs = [
        Request(
            id=f"r{i}",
            queue="default",
            slots=rng.choice([1, 1, 1, 2, 2, 4]),
            cpu=rng.choice([0.25, 0.5, 1.0, 1.0, 2.0, 4.0]),
            memory_mb=rng.choice([256, 512, 1024, 2048, 4096, 8192]),
        )
        for i in range(requests)
    ]
    bound = max(
        math.ceil(sum(r.slots for r in reqs) / cap["slots"]),
        math.ceil(sum(r.cpu for r in reqs) / cap["cpu"]),
        math.ceil(sum(r.memory_mb for r in reqs) / cap["memory_mb"]),
    )
    runners = [RunnerState(id=f"n{i:05d}", queues=frozenset({"default"}), **cap) for i in range(bound * 2)]
    result = get_strategy("MaxPackingStrategy").place(reqs, runners)
    assert len(result.placements) == len(reqs)
    used = len({p.runner_id for p in result.placements})
    ffd = _first_fit_decreasing(reqs, cap)
    return {
        "requests": requests,
        "maxpacking_runners": used,
        "ffd_runners": ffd,
        "volume_lower_bound": bound,
        "vs_ffd_percent": round((used / ffd - 1) * 100, 2),
        "vs_lower_bound_percent": round((used / bound - 1) * 100, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--strategy", default="EvenSpreadStrategy")
    parser.add_argument("--packing-requests", type=int, default=5000)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_throughput:
        print(json.dumps({"throughput": throughput(args.runners, args.requests, args.strategy)}), flush=True)
    print(json.dumps({"packing": packing(args.packing_requests)}), flush=True)


if __name__ == "__main__":
    main()
