"""Prune at 100,000 finished allocations: time per batch, and rescue latency while pruning.

    .venv/bin/python -m bench.prune [--rows 100000]

Fills a fresh database with ``--rows`` finished allocations past retention (inserted with
generate_series; 90% reported, 10% of a dead scheduler, never reported, past
``unreported_retention``) and their audit events, plus 50 live runners with 4 running allocations
each. Then, in one process:

* baseline: the allocator's upkeep pass (rescue) with one runner's lease expired before each pass;
* the same while the allocator's prune loop (``Allocator.prune_pass``, batches of ``PRUNE_BATCH``
  rows per table, each its own transaction) deletes everything, timing each batch;
* for comparison, the same while one unbatched DELETE (the prune of before issue 11) runs.

Prints one line per phase; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import replace

import psycopg
import structlog

from allocator.service import PRUNE_BATCH, Allocator
from bench.common import bench_database, percentile, sql
from runtime_executor.settings import Settings

DAY = 86400

FILL = sql("""
INSERT INTO {schema}.allocations
    (id, dag_id, task_id, run_id, queue, slots, cpu, memory_mb, state, reported_state,
     scheduler_job_id, created_at, finished_at)
SELECT gen_random_uuid(), 'bench', 't' || n, 'r', 'default', 1, 0, 0,
       CASE WHEN n %% 10 = 0 THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN n %% 10 = 0 THEN NULL ELSE 'succeeded' END,
       CASE WHEN n %% 10 = 0 THEN 999 ELSE 1 END,
       clock_timestamp() - interval '9 days',
       clock_timestamp() - CASE WHEN n %% 10 = 0 THEN interval '8 days' ELSE interval '2 days' END
  FROM generate_series(1, %(rows)s) AS n
""")
BACKDATE_EVENTS = sql("UPDATE {schema}.allocation_events SET at = at - interval '2 days'")

RUNNERS = sql("""
INSERT INTO {schema}.runners (id, name, hostname, pid, queues, slots, cpu, memory_mb, lease_expires_at)
SELECT gen_random_uuid(), 'sim-' || n, 'bench', n, ARRAY['default'], 8, 4, 4096,
       clock_timestamp() + interval '1 hour'
  FROM generate_series(1, 50) AS n;
INSERT INTO {schema}.allocations
    (id, dag_id, task_id, run_id, queue, slots, cpu, memory_mb, state, runner_id, started_at)
SELECT gen_random_uuid(), 'bench', 'live', 'r', 'default', 1, 0, 0, 'running', r.id, clock_timestamp()
  FROM {schema}.runners AS r, generate_series(1, 4);
""")

# the prune of before issue 11: one statement, one transaction, every table at once
UNBATCHED = sql("""
WITH gone AS (
    DELETE FROM {schema}.allocations
     WHERE finished_at < clock_timestamp() - make_interval(secs => %(retention)s)
       AND state IN ('succeeded', 'failed', 'lost', 'cancelled')
       AND (reported_state IS NOT DISTINCT FROM state OR state = 'cancelled')
    RETURNING id
), events AS (
    DELETE FROM {schema}.allocation_events
     WHERE at < clock_timestamp() - make_interval(secs => %(retention)s)
)
SELECT count(*) FROM gone
""")


def _fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL, {"rows": rows})
        conn.execute(BACKDATE_EVENTS)
        conn.execute(sql("VACUUM ANALYZE {schema}.allocations"))
        conn.execute(sql("VACUUM ANALYZE {schema}.allocation_events"))


def _expire_one_runner(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql(
                "UPDATE {schema}.runners SET lease_expires_at = clock_timestamp() - interval '1 s'"
                " WHERE id = (SELECT id FROM {schema}.runners WHERE state = 'active' LIMIT 1)"
            )
        )


def _rescue_latencies(
    allocator: Allocator, url: str, until: threading.Event | None, count: int
) -> list[float]:
    """Upkeep passes (each rescuing one expired runner and its 4 running rows), in ms."""
    out: list[float] = []
    while len(out) < count and not (until is not None and until.is_set()):
        _expire_one_runner(url)
        started = time.perf_counter()
        allocator.upkeep_pass()
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    return out


def _summary(values: list[float]) -> str:
    return f"n={len(values)} p50={percentile(values, 50):.1f} p95={percentile(values, 95):.1f} max={max(values):.1f} ms"


def _refill_runners(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql("DELETE FROM {schema}.allocations WHERE task_id = 'live'"))
        conn.execute(sql("DELETE FROM {schema}.runners"))
        for statement in RUNNERS.split(";")[:2]:
            conn.execute(statement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR)
    )  # no rescue chatter
    with bench_database() as url:
        settings = replace(Settings(database_url=url), retention=DAY, unreported_retention=7 * DAY)
        _fill(url, args.rows)
        _refill_runners(url)
        allocator = Allocator(settings)
        try:
            print(f"rows: {args.rows} finished allocations + {args.rows} audit events; batch {PRUNE_BATCH}")
            print("rescue, idle:            ", _summary(_rescue_latencies(allocator, url, None, 40)))
            _refill_runners(url)

            batches: list[float] = []
            done = threading.Event()

            def prune() -> None:
                started = time.perf_counter()
                more = True
                while more:
                    t = time.perf_counter()
                    more = allocator.prune_pass()
                    batches.append((time.perf_counter() - t) * 1000)
                batches.append(-(time.perf_counter() - started))  # total, marked negative
                done.set()

            thread = threading.Thread(target=prune)
            thread.start()
            during = _rescue_latencies(allocator, url, done, 10_000)
            thread.join()
            total = -batches.pop()
            with psycopg.connect(url, autocommit=True) as conn:
                left = conn.execute(
                    sql("SELECT count(*) FROM {schema}.allocations WHERE task_id <> 'live'")
                ).fetchone()
            print(
                f"prune, batched:           {len(batches)} ticks in {total:.2f} s; per tick {_summary(batches)}; left {left[0]}"
            )
            print("rescue, during the prune:", _summary(during))

            _fill(url, args.rows)
            _refill_runners(url)
            done.clear()
            unbatched: list[float] = []

            def prune_unbatched() -> None:
                started = time.perf_counter()
                with psycopg.connect(url, autocommit=True) as conn:
                    deleted = conn.execute(UNBATCHED, {"retention": DAY}).fetchone()[0]
                unbatched.extend([time.perf_counter() - started, deleted])
                done.set()

            thread = threading.Thread(target=prune_unbatched)
            thread.start()
            during = _rescue_latencies(allocator, url, done, 10_000)
            thread.join()
            print(
                f"prune, unbatched (before): one statement, {unbatched[0]:.2f} s, {unbatched[1]} allocations"
            )
            print("rescue, during it:       ", _summary(during))
        finally:
            allocator.stop()


if __name__ == "__main__":
    main()
