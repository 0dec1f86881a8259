"""24 one-second tasks of four sizes, 32 slots and 7.2 cpu in all.

The two bench runners (16 slots, 4 cpu, 8 GiB each) fit them all at once, as LocalExecutor's 32
workers do. ``executor_config`` is rtx's resource request; other executors ignore it.
"""

from _bench import COMMON, sleep
from airflow.sdk import DAG

SIZES = [
    ({"slots": 1, "cpu": 0.1, "memory": "128MB"}, 12),
    ({"slots": 1, "cpu": 0.25, "memory": "256MB"}, 8),
    ({"slots": 2, "cpu": 0.5, "memory": "512MB"}, 2),
    ({"slots": 4, "cpu": 1, "memory": "1GiB"}, 2),
]

with DAG("bench_mixed", **COMMON):
    for size, (request, count) in enumerate(SIZES):
        for i in range(count):
            sleep.override(task_id=f"s{size}_{i:02d}", executor_config={"runtime": request})(1)
