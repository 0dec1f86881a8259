"""What the benchmark DAG files share (this folder is on sys.path; Airflow skips files without "dag")."""

from __future__ import annotations

import datetime as dt
import time

from airflow.sdk import task

# max_active_tasks is raised so that [core] parallelism is the only limit on concurrency
COMMON = dict(
    schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, max_active_tasks=1024, max_active_runs=1
)


@task
def noop() -> None:
    return None


@task
def sleep(seconds: float) -> None:
    time.sleep(seconds)
