"""DAGs of the deployment tests: a task long enough to restart its runner under it, and a task whose
log is read back through the worker log server."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

with DAG("rtx_drain", schedule=None, start_date=START, catchup=False):
    BashOperator(task_id="sleeper", bash_command="echo drain-started; sleep 8; echo drain-finished")

with DAG("rtx_served_log", schedule=None, start_date=START, catchup=False):
    BashOperator(task_id="hello", bash_command='echo "served-log-marker from $(hostname)"')
