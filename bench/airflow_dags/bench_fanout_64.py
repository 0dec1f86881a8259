"""64 independent no-op tasks."""

from _bench import COMMON, noop
from airflow.sdk import DAG

with DAG("bench_fanout_64", **COMMON):
    for i in range(64):
        noop.override(task_id=f"t{i:03d}")()
