"""DAGs of the multi-host tests (tests/e2e/test_multihost.py): tasks that keep a trace of themselves.

Each task appends JSON lines to the file named by the run's conf ``trace``: ``start``, a ``tick``
every ``TICK`` seconds while it runs, and ``end``, each with its try, map index, runner and its own
``time.time()``. A task SIGKILLed by fencing writes no ``end``; its last tick bounds when it died.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, get_current_context

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TICK = 0.1


def _trace(path: str, event: str) -> None:
    ti = get_current_context()["ti"]
    line = {
        "event": event,
        "task": ti.task_id,
        "map_index": ti.map_index,
        "try": ti.try_number,
        "runner": os.environ.get("RTX_RUNNER_ID"),
        "host": socket.gethostname(),
        "t": time.time(),
    }
    with open(path, "a") as f:  # one short O_APPEND write per line: lines never interleave
        f.write(json.dumps(line) + "\n")


def traced(trace: str, seconds: float, retry_seconds: float | None = None) -> None:
    _trace(trace, "start")
    if retry_seconds is not None and get_current_context()["ti"].try_number > 1:
        seconds = retry_seconds
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        time.sleep(TICK)
        _trace(trace, "tick")
    _trace(trace, "end")


TRACE = "{{ dag_run.conf['trace'] }}"

with DAG("rtx_partition", schedule=None, start_date=START, catchup=False):
    PythonOperator(
        task_id="victim",
        python_callable=traced,
        op_kwargs={"trace": TRACE, "seconds": 60, "retry_seconds": 3},  # try 1 is cut off long before it ends
        retries=1,
        retry_delay=dt.timedelta(seconds=0),
    )

with DAG("rtx_flap", schedule=None, start_date=START, catchup=False):
    PythonOperator.partial(task_id="steady", python_callable=traced, retries=0).expand(
        op_kwargs=[{"trace": TRACE, "seconds": 12} for _ in range(12)]
    )

with DAG("rtx_clock", schedule=None, start_date=START, catchup=False):
    for queue in ("clock_ahead", "clock_behind"):
        PythonOperator(
            task_id=queue,
            queue=queue,
            python_callable=traced,
            op_kwargs={"trace": TRACE, "seconds": 15},
            retries=0,
        )
