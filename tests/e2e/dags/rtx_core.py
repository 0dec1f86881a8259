"""End-to-end DAGs for the core path: requests of different sizes, a failure, a retry, a bad request."""

from __future__ import annotations

import datetime as dt
import os

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from runtime_executor import runtime_config

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _report_placement() -> None:
    print(f"RTX_ALLOCATION_ID={os.environ['RTX_ALLOCATION_ID']}")
    print(f"RTX_RUNNER_ID={os.environ['RTX_RUNNER_ID']}")
    assert "RTX_DATABASE_URL" not in os.environ


with DAG("rtx_core", schedule=None, start_date=START, catchup=False):
    BashOperator(
        task_id="small",
        bash_command="echo small-task-ran",
        executor_config=runtime_config(cpu=0.5, memory="256MB"),
    )
    BashOperator(
        task_id="big",
        bash_command="echo big-task-ran; sleep 1",
        executor_config={"runtime": {"cpu": "1.5", "memory": "1GiB", "slots": 2}},
    )
    BashOperator(task_id="airflow_resources", bash_command="echo ok", resources={"cpus": 1, "ram": 512})
    PythonOperator(task_id="placement", python_callable=_report_placement)

with DAG("rtx_failing", schedule=None, start_date=START, catchup=False):
    BashOperator(task_id="fails", bash_command="echo about-to-fail; exit 3")

with DAG("rtx_retry", schedule=None, start_date=START, catchup=False):
    BashOperator(
        task_id="flaky",
        bash_command='echo "try {{ ti.try_number }}"; [ "{{ ti.try_number }}" -gt 1 ]',
        retries=1,
        retry_delay=dt.timedelta(seconds=1),
    )

with DAG("rtx_bad_request", schedule=None, start_date=START, catchup=False):
    BashOperator(
        task_id="too_many_slots", bash_command="echo never", executor_config={"runtime": {"slots": 65}}
    )
    BashOperator(task_id="fine", bash_command="echo fine")
