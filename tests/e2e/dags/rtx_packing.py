"""Three tasks that each reserve 1000 MB, for the placement e2e test: where they land shows the strategy."""

from __future__ import annotations

import datetime as dt
import os
import time

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from runtime_executor import runtime_config


def _hold() -> None:
    runner = os.environ["RTX_RUNNER_ID"]
    print(f"PLACED runner={runner} start={time.time():.3f}")
    time.sleep(4)
    print(f"PLACED runner={runner} end={time.time():.3f}")


with DAG("rtx_packing", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False):
    for i in range(3):
        PythonOperator(
            task_id=f"hold_{i}", python_callable=_hold, executor_config=runtime_config(memory="1000MB")
        )
