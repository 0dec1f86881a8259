"""Tasks rtx fails before they run (or whose runner is lost): their reason must be in their log."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

with DAG("rtx_failure_log", schedule=None, start_date=START, catchup=False):
    BashOperator(
        task_id="bad_request", bash_command="echo never", executor_config={"runtime": {"memory": "lots"}}
    )
    BashOperator(task_id="unschedulable", bash_command="echo never", executor_config={"runtime": {"cpu": 64}})
    BashOperator(task_id="fine", bash_command="echo fine-task-ran")

with DAG("rtx_runner_lost", schedule=None, start_date=START, catchup=False):
    BashOperator(task_id="hangs", bash_command="echo hangs-started; sleep 600", queue="doomed")

with DAG("rtx_never_started", schedule=None, start_date=START, catchup=False):
    BashOperator(task_id="cannot_start", bash_command="echo never", queue="nostart")
