"""With remote task logging, a failure rtx decides is uploaded through Airflow's remote task log.

The remote log is ``tests/e2e/remote_log_store.py``: a folder behind Airflow's real ``RemoteLogIO``
contract (no network here for S3 and the like), loaded by every component from
``[logging] logging_config_class``. Its uploads remove the local copy, so what the REST API returns
for a finished task came from the remote store.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_failure_log import RTX_LINE, _log_json, _sources, _wait_rtx_line, wait_runners
from tests.support.daemons import REPO, wait_for

pytestmark = pytest.mark.e2e

STACK_ENV = {
    "RTX_UNSCHEDULABLE_TIMEOUT": "3",
    "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "tests.e2e.remote_log_store.LOGGING_CONFIG",
    "PYTHONPATH": str(REPO),
}


def test_failure_reasons_are_uploaded_to_the_remote_task_log(stack):
    wait_runners(stack, "runner-small", "runner-large")
    run_id = stack.airflow.trigger("rtx_failure_log")
    assert stack.airflow.wait_for_run("rtx_failure_log", run_id, 180) == "failed", stack.logs()
    relative = f"dag_id=rtx_failure_log/run_id={run_id}/task_id={{}}/attempt=1.log"
    remote = stack.airflow.home / "remote-log-store"
    for task_id, shown in (("bad_request", "lots"), ("unschedulable", "unschedulable for 3 s")):
        body, line = _wait_rtx_line(stack, "rtx_failure_log", run_id, task_id)
        assert shown in line["event"], line
        stored = remote / relative.format(task_id)
        assert any(s.startswith("remote-log-store: ") and s.endswith(str(stored)) for s in _sources(body)), (
            body
        )
        assert RTX_LINE in stored.read_text()
        assert not (
            stack.airflow.home / "logs" / relative.format(task_id)
        ).exists()  # uploaded, not read locally
    # the task that ran went through the same remote log (its supervisor uploaded it), without an rtx line
    # (it uploads after it reported success: wait for that)
    fine = wait_for(
        lambda: (
            "remote-log-store: " in (text := json.dumps(_log_json(stack, "rtx_failure_log", run_id, "fine")))
            and text
        ),
        60,
        interval=0.5,
        what="the log of the task that ran, uploaded",
    )
    assert "fine-task-ran" in fine and "remote-log-store: " in fine and RTX_LINE not in fine, fine
