"""A task that allocates 5x its reservation next to one that fits, on a runner with --isolation cgroup
(queue ``isolated``; tests/e2e/test_core_path.py starts that runner)."""

from __future__ import annotations

import datetime as dt
import time

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from runtime_executor import runtime_config

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RESERVED_MB = 200


def _hog() -> None:
    print("hog-allocating")
    ballast = bytearray(5 * RESERVED_MB * 2**20)  # touched at once (zero-filled)
    time.sleep(30)
    print("hog-survived", len(ballast))


def _neighbour() -> None:
    ballast = bytearray(20 * 2**20)
    time.sleep(4)
    print("neighbour-done", len(ballast))


with DAG("rtx_oom", schedule=None, start_date=START, catchup=False):
    for task_id, func in (("hog", _hog), ("neighbour", _neighbour)):
        PythonOperator(
            task_id=task_id,
            python_callable=func,
            queue="isolated",
            retries=0,
            executor_config=runtime_config(cpu=0.5, memory=f"{RESERVED_MB}MB"),
        )
