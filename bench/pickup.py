"""Pickup latency: allocation inserted -> task process started, on an idle system with one runner.

    make bench-pickup            # or: python -m bench.pickup --tasks 300

One allocator and one runner run as real processes against a real Postgres. The benchmark inserts
one allocation at a time (committed, as the scheduler's transaction would), and the task process
(``bench.noop_task``) records the wall-clock moment it runs. Latency = that moment minus the moment
just before the INSERT was sent. Same host, same clock. Airflow's own task supervisor is not part
of the figure (it is the same for every executor); the rtx part is: NOTIFY to the allocator, the
placement pass, NOTIFY to the runner, the guarded start, and the fork from the warm fork server.

Stages (p50, ms; database clock, same host): insert (sent -> created_at), placed (-> assigned_at),
claimed (-> started_at), handed (-> process_started_at: the task handed over, pid written), run
(-> the task's own record). ``--busy N`` keeps N processes spinning on the CPU meanwhile (at nice 0,
as Airflow's scheduler and api-server are in a burst), to see the stages on a loaded host.
``--allocator-latency-ms X`` puts X ms each way between the allocator and Postgres (a delaying
``testing.proxy.TcpProxy``), as when it runs on another machine than the database; the JSON line
gives the round trip measured through it (``allocator_rtt_ms``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from bench.common import active_runners, bench_database, gateway, percentile, sql
from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings
from testing.daemons import Daemons, wait_for
from testing.proxy import TcpProxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between inserts (idle system)")
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU meanwhile")
    parser.add_argument(
        "--allocator-latency-ms", type=float, default=0.0, help="each way between the allocator and Postgres"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rtx-bench-pickup-"))
    record = work / "started.txt"
    rtt_ms = 0.0
    with bench_database() as url, contextlib.ExitStack() as cleanup:
        daemons = Daemons(url, work)
        try:
            allocator_env = {}
            if args.allocator_latency_ms:
                far = _far_url(url, args.allocator_latency_ms / 1000, cleanup)
                rtt_ms = _round_trip_ms(far)
                allocator_env["RTX_DATABASE_URL"] = far
            daemons.allocator(**allocator_env)
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
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
            for proc in spinners:
                proc.start()
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
            for proc in spinners:
                proc.kill()
            with gateway(url) as gw:
                rows = gw.conn.execute(
                    sql(
                        "select id::text, extract(epoch from created_at), extract(epoch from assigned_at),"
                        " extract(epoch from started_at), extract(epoch from process_started_at)"
                        " from {schema}.allocations"
                    )
                ).fetchall()
        finally:
            daemons.stop_all()
    measured = list(sent)[args.warmup :]
    latencies = [(float(started[a]) - sent[a]) * 1000 for a in measured]
    result: dict[str, float] = {
        "tasks": len(latencies),
        "busy": args.busy,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
    }
    moments = {r[0]: [float(v) for v in r[1:]] for r in rows}
    for i, stage in enumerate(STAGES):
        gaps = []
        for a in measured:
            times = [sent[a], *moments[a], float(started[a])]
            gaps.append((times[i + 1] - times[i]) * 1000)
        result[f"stage_{stage}_ms"] = round(percentile(gaps, 50), 2)
    result["allocator_rtt_ms"] = rtt_ms
    print(json.dumps(result))


def _far_url(url: str, latency: float, cleanup: contextlib.ExitStack) -> str:
    """``url`` through a proxy that holds every chunk ``latency`` s each way (closed by ``cleanup``)."""
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432, latency=latency)
    cleanup.callback(proxy.close)
    return parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()


def _round_trip_ms(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            times.append((time.perf_counter() - started) * 1000)
    return round(percentile(times, 50), 2)


STAGES = ("insert", "placed", "claimed", "handed", "run")


def _spin() -> None:
    while True:
        pass


if __name__ == "__main__":
    main()
