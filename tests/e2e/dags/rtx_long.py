"""A task long enough to kill the scheduler under it."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG("rtx_long", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False):
    BashOperator(task_id="long", bash_command="echo started; sleep 20; echo finished")
