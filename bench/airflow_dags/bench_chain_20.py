"""20 no-op tasks, each after the one before."""

from _bench import COMMON, noop
from airflow.sdk import DAG, chain

with DAG("bench_chain_20", **COMMON):
    chain(*(noop.override(task_id=f"t{i:02d}")() for i in range(20)))
