"""Benchmark task (``RTX_TASK_ENTRY=bench.noop_task:run``): records the moment the task process runs."""

from __future__ import annotations

import os
import time


def run(workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    started = time.time()
    record = workload_json.strip('"')
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.environ['RTX_ALLOCATION_ID']} {started:.6f}\n".encode())
    finally:
        os.close(fd)
