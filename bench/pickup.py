"""Pickup latency: allocation inserted -> task process started, on an idle system with one runner.

    make bench-pickup            # or: python -m bench.pickup --tasks 300

One allocator and one runner run as real processes against a real Postgres. The benchmark inserts
one allocation at a time (committed, as the scheduler's transaction would), and the task process
(``bench.noop_task``) records the wall-clock moment it runs. Latency = that moment minus the moment
just before the INSERT was sent. Same host, same clock. Airflow's own task supervisor is not part
of the figure (it is the same for every executor); the rtx part is: NOTIFY to the allocator, the
placement pass, NOTIFY to the runner, the guarded start, and the fork from the warm fork server.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import active_runners, bench_database, percentile
from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings
from testing.daemons import Daemons, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between inserts (idle system)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rtx-bench-pickup-"))
    record = work / "started.txt"
    with bench_database() as url:
        daemons = Daemons(url, work)
        try:
            daemons.allocator()
            daemons.runner(
                "--slots",
                "16",
                "--cpu",
                "4",
                "--memory",
                "8192",
                *os.environ.get("RTX_BENCH_RUNNER_ARGS", "").split(),  # e.g. "--tasks-per-process 100"
                name="bench-runner",
                fake=False,
                RTX_TASK_ENTRY="bench.noop_task:run",
            )
            wait_for(lambda: active_runners(url), 60, what="runner registration")
            db = Database(Settings(database_url=url), "bench-pickup")
            sent: dict[str, float] = {}
            total = args.warmup + args.tasks
            for i in range(total):
                allocation_id = str(uuid.uuid4())
                with db.transaction() as gw:
                    sent[allocation_id] = time.time()
                    gw.insert_allocation(
                        id=allocation_id,
                        kind="task",
                        dag_id="bench",
                        task_id=f"t{i}",
                        run_id="bench",
                        map_index=-1,
                        try_number=1,
                        callback_id=None,
                        queue="default",
                        priority_weight=1,
                        slots=1,
                        cpu=0.0,
                        memory_mb=0,
                        state="unassigned",
                        workload=json.dumps(str(record)),
                        scheduler_job_id=None,
                        reason=None,
                    )
                # wait for this one to start: an idle system, one request at a time
                wait_for(
                    lambda aid=allocation_id: record.exists() and aid in record.read_text(),
                    10,
                    interval=0.001,
                )
                time.sleep(args.gap)
            started = dict(line.split() for line in record.read_text().splitlines())
        finally:
            daemons.stop_all()
    latencies = [(float(started[a]) - sent[a]) * 1000 for a in list(sent)[args.warmup :]]
    result = {
        "tasks": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
