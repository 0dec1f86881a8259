"""32 tasks that sleep 2 s, side by side."""

from _bench import COMMON, sleep
from airflow.sdk import DAG

with DAG("bench_sleep_32", **COMMON):
    for i in range(32):
        sleep.override(task_id=f"t{i:02d}")(2)
