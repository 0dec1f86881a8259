"""Where a task's start goes inside its spare: a task entry that marks each step of Airflow's
supervisor set-up, with the process's minor page faults, and a report that joins the marks with the
rows of a kept benchmark database.

    RTX_BENCH_KEEP_DB=1 python -m bench.airflow \\
        --executors rtx:RTX_TASK_ENTRY=bench.start_trace --workloads chain_20 --runs 1
    python -m bench.start_trace rtx_bench_af_<id>        # the database the run kept

The entry runs ``runner.task_process:run`` unchanged and keeps its hooks (``between_tasks``,
``retire``); it only wraps functions of Airflow's supervisor to time them. Marks go to
``RTX_START_TRACE`` (default ``/tmp/rtx-start-trace.jsonl``), one line per task. Used for
docs/performance.md, "The fork ahead's copy-on-write faults". Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

OUT = os.environ.get("RTX_START_TRACE", "/tmp/rtx-start-trace.jsonl")
_marks: list[tuple[str, float, int]] = []


def mark(name: str) -> None:
    _marks.append((name, time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))


def _timed(owner: Any, name: str, label: str, *, end: bool = True) -> None:
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(label + (">" if end else ""))
        try:
            return original(*args, **kwargs)
        finally:
            if end:
                mark(label + "<")

    setattr(owner, name, timed)


def _install() -> None:
    """Wrap the supervisor's set-up steps (after runner.task_process installed its own patches)."""
    from airflow.sdk.execution_time import supervisor

    from runner import task_process

    if hasattr(supervisor, "_ensure_client"):  # 3.3; 3.1 and 3.2 build the client inline
        ensure_client = supervisor._ensure_client

        @contextlib.contextmanager
        def client(*args: Any, **kwargs: Any) -> Iterator[Any]:
            mark("client>")
            with ensure_client(*args, **kwargs) as made:
                mark("client<")
                yield made

        supervisor._ensure_client = client
    _timed(supervisor, "_configure_logging", "task log")
    _timed(supervisor, "ensure_secrets_backend_loaded", "secrets")
    _timed(task_process, "run_workload", "run_workload", end=False)  # it returns when the task is over
    start = supervisor.WatchedSubprocess.__dict__["start"].__func__  # runner.prestart's, if installed

    def timed_start(cls: type, *args: Any, **kwargs: Any) -> Any:
        mark("start>")
        try:
            return start(cls, *args, **kwargs)
        finally:
            mark("start<")

    supervisor.WatchedSubprocess.start = classmethod(timed_start)  # type: ignore[method-assign, assignment]
    on_started: Callable[..., Any] = supervisor.ActivitySubprocess._on_child_started

    def timed_on_started(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("API start call")  # the supervisor takes start_date right here
        return on_started(self, *args, **kwargs)

    supervisor.ActivitySubprocess._on_child_started = timed_on_started  # type: ignore[method-assign]


def run(workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    from runner import task_process

    _marks.clear()
    mark("workload")
    try:
        task_process.run(workload_json, env, server, proctitle)
    finally:
        with open(OUT, "a") as f:
            f.write(json.dumps({"id": env.get("RTX_ALLOCATION_ID"), "marks": _marks}) + "\n")


def between_tasks() -> None:
    from runner import task_process

    task_process.between_tasks()


def retire() -> None:
    from runner import task_process

    task_process.retire()


if __name__ != "__main__":  # imported as a task entry, in the fork server
    _install()


# -- the report --------------------------------------------------------------------------------------
QUERY = """
select a.id::text, extract(epoch from t.queued_dttm), extract(epoch from a.created_at),
       extract(epoch from a.assigned_at), extract(epoch from a.started_at), extract(epoch from t.start_date)
  from {schema}.allocations a
  join task_instance t on t.dag_id = a.dag_id and t.task_id = a.task_id and t.run_id = a.run_id
   and t.map_index = a.map_index and t.try_number = a.try_number
 where t.queued_dttm is not null and t.start_date is not null
"""


def report(database: str, out: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from bench.common import DEFAULT_ADMIN_URL, sql

    traced = {}
    with open(out) as f:
        for line in f:
            record = json.loads(line)
            traced[record["id"]] = record["marks"]
    admin = conninfo_to_dict(os.environ.get("RTX_BENCH_PG_URL", DEFAULT_ADMIN_URL))
    with psycopg.connect(make_conninfo(**{**admin, "dbname": database})) as conn:
        rows = conn.execute(sql(QUERY)).fetchall()
    since_queued: dict[str, list[float]] = {}
    faults: dict[str, list[int]] = {}
    for allocation_id, queued, *moments in rows:
        marks = traced.get(allocation_id)
        if not marks:
            continue
        rows_before = zip(("row inserted", "placed", "claimed"), moments[:3], strict=True)
        points = [(name, float(at), None) for name, at in rows_before]
        points += [(name, at, fault - marks[0][2]) for name, at, fault in marks]
        points.append(("start_date", float(moments[3]), None))
        for name, at, fault in points:
            since_queued.setdefault(name, []).append((at - float(queued)) * 1000)
            if fault is not None:
                faults.setdefault(name, []).append(fault)
    print(f"{len(since_queued.get('workload', []))} tasks traced; medians")
    print(f"{'step':<20} {'ms after queued_dttm':>20} {'faults since the workload':>26}")
    for name, values in since_queued.items():
        fault = f"{statistics.median(faults[name]):.0f}" if name in faults else ""
        print(f"{name:<20} {statistics.median(values):>20.1f} {fault:>26}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", help="the database a RTX_BENCH_KEEP_DB=1 run kept")
    parser.add_argument("--out", default=OUT, help="the marks file (RTX_START_TRACE)")
    args = parser.parse_args()
    report(args.database, args.out)


if __name__ == "__main__":
    main()
