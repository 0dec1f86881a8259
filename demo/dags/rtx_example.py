"""rtx demo: tasks that ask for different amounts of CPU, memory and slots.

``extract`` runs first; then six tasks run side by side on the two demo runners, each reserving
what it asked for while it runs (watch Browse → Executor Status or ``rtx status --watch 1``):

* ``score`` (mapped ×3): 1 cpu, 512 MB each, spread over the runners;
* ``aggregate``: 2 slots, 1 cpu, 1 GiB;
* ``train_model``: queue ``heavy`` (only ``demo-large`` serves it), 4 slots, 3 cpu, 3 GiB;
* ``airflow_resources``: Airflow's own ``resources={"cpus": ..., "ram": ...}``, which rtx reads too;

then ``report`` prints where each part ran.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from runtime_executor import runtime_config


def _where_am_i() -> None:
    # a runner hands its task the allocation and runner ids (never rtx's database URL)
    print(f"allocation {os.environ.get('RTX_ALLOCATION_ID')} on runner {os.environ.get('RTX_RUNNER_ID')}")
    print(f"host {socket.gethostname()}, pid {os.getpid()}")


with DAG(
    "rtx_example",
    description="rtx demo: resource requests (cpu, memory, slots) and a queue",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["rtx", "demo"],
    doc_md=__doc__,
):
    extract = BashOperator(
        task_id="extract",
        bash_command="echo 'extracting'; sleep 1",
        executor_config=runtime_config(cpu=0.5, memory="256MB"),
    )
    score = BashOperator.partial(
        task_id="score",
        executor_config=runtime_config(cpu=1, memory="512MB"),
    ).expand(bash_command=[f"echo 'scoring part {i}'; sleep 4" for i in range(3)])
    aggregate = BashOperator(
        task_id="aggregate",
        bash_command="echo 'aggregating'; sleep 4",
        executor_config=runtime_config(cpu=1, memory="1GiB", slots=2),
    )
    train_model = BashOperator(
        task_id="train_model",
        queue="heavy",
        bash_command="echo 'training on the heavy queue'; sleep 5",
        executor_config=runtime_config(cpu=3, memory="3GiB", slots=4),
    )
    airflow_resources = PythonOperator(
        task_id="airflow_resources",
        python_callable=_where_am_i,
        resources={"cpus": 1, "ram": 512},
    )
    report = PythonOperator(
        task_id="report",
        python_callable=_where_am_i,
        executor_config=runtime_config(cpu=0.25, memory=128),
    )

    extract >> [score, aggregate, train_model, airflow_resources] >> report
