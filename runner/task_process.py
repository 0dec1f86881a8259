"""The Airflow task: run one workload under Airflow's own task supervisor.

The runner's fork server imports this module once, so Airflow's supervisor is already loaded when a
task starts: a fork, not a fresh interpreter. The workload JSON, which holds the task's token,
reaches the child through the fork server's pipe, never argv.
"""

from __future__ import annotations

import sys

from runtime_executor.airflow_compat import WORKLOAD_ADAPTER, run_workload

_WORKLOAD = WORKLOAD_ADAPTER  # the workload union of the installed Airflow (3.1 to 3.3)


def run(workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    workload = _WORKLOAD.validate_json(workload_json)
    code = run_workload(workload, server=server, proctitle=proctitle)
    sys.exit(code or 0)
