"""A failure rtx decides (bad request, unschedulable, runner lost) is in the task's log, read through
the REST API of a real Airflow 3.3 whose api-server shares the scheduler's log folder."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from tests.support.daemons import query, wait_for

pytestmark = pytest.mark.e2e

STACK_ENV = {"RTX_UNSCHEDULABLE_TIMEOUT": "3"}
RTX_LINE = "rtx (RuntimeExecutor) failed this try"


def _log_json(stack, dag_id: str, run_id: str, task_id: str) -> dict:
    response = stack.airflow.api(
        "GET",
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
        headers={"Accept": "application/json"},
    )
    response.raise_for_status()
    return response.json()


def _log_text(stack, dag_id: str, run_id: str, task_id: str) -> str:
    """The log as text; empty while the task instance or its log does not exist yet (404)."""
    try:
        return json.dumps(_log_json(stack, dag_id, run_id, task_id))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return ""
        raise


def _rtx_lines(body: dict) -> list[dict]:
    return [e for e in body["content"] if isinstance(e, dict) and RTX_LINE in str(e.get("event"))]


def _wait_rtx_line(stack, dag_id: str, run_id: str, task_id: str, timeout: float = 60) -> tuple[dict, dict]:
    body = wait_for(
        lambda: (b := _log_json(stack, dag_id, run_id, task_id)) and _rtx_lines(b) and b,
        timeout,
        interval=0.5,
        what=f"the rtx reason in the log of {dag_id}.{task_id}",
    )
    lines = _rtx_lines(body)
    assert len(lines) == 1, lines  # written once, though sync() delivers at least once
    return body, lines[0]


def _sources(body: dict) -> list[str]:
    return [str(e.get("event")) for e in body["content"] if isinstance(e, dict)]


def wait_runners(stack, *names: str) -> None:
    """The named runners live before tasks queue: the stack's unschedulable timeout is 3 s."""
    wait_for(
        lambda: (
            len(
                query(
                    stack.airflow.database_url,
                    "SELECT 1 FROM runtime_executor.runners WHERE name = ANY(%(n)s) AND state = 'active'",
                    {"n": list(names)},
                )
            )
            == len(names)
        ),
        90,
        interval=0.5,
        what=f"runners {names} registered",
    )


@pytest.fixture(scope="module")
def failed_run(stack):
    wait_runners(stack, "runner-small", "runner-large")
    run_id = stack.airflow.trigger("rtx_failure_log")
    state = stack.airflow.wait_for_run("rtx_failure_log", run_id, 180)
    assert state == "failed", stack.logs()
    return run_id


def test_bad_request_reason_is_in_the_task_log(stack, failed_run):
    body, line = _wait_rtx_line(stack, "rtx_failure_log", failed_run, "bad_request")
    assert "rtx_failure_log.bad_request" in line["event"] and "lots" in line["event"], line
    assert line["level"] == "error" and line["logger"] == "rtx.executor" and line["timestamp"]
    allocation_id = query(
        stack.airflow.database_url,
        "SELECT id::text FROM runtime_executor.allocations WHERE dag_id = 'rtx_failure_log' AND run_id = %(r)s"
        " AND task_id = 'bad_request'",
        {"r": failed_run},
    )[0][0]
    assert line["allocation_id"] == allocation_id
    # the very file Airflow's reader reads for this try, under its base log folder, named by its template
    expected = (
        stack.airflow.home
        / "logs"
        / "dag_id=rtx_failure_log"
        / f"run_id={failed_run}"
        / "task_id=bad_request"
        / "attempt=1.log"
    )
    assert str(expected) in _sources(body), _sources(body)
    assert RTX_LINE in expected.read_text()


def test_unschedulable_reason_is_in_the_task_log(stack, failed_run):
    _, line = _wait_rtx_line(stack, "rtx_failure_log", failed_run, "unschedulable")
    assert "unschedulable for 3 s" in line["event"], line
    assert line["task"] == "rtx_failure_log.unschedulable" and line["try_number"] == 1


def test_a_task_that_ran_gets_no_rtx_line(stack, failed_run):
    body = _log_json(stack, "rtx_failure_log", failed_run, "fine")
    assert "fine-task-ran" in json.dumps(body)
    assert not _rtx_lines(body)


def test_every_failed_start_is_in_the_task_log(stack):
    stack.daemon(
        "runner-nostart",
        "runner",
        "--queue",
        "nostart",
        "--name",
        "runner-nostart",
        RTX_START_RETRIES="1",
        RTX_TEST_FAIL_LAUNCHES="10",  # every launch on this runner fails before any task code runs
    )
    wait_runners(stack, "runner-nostart")
    run_id = stack.airflow.trigger("rtx_never_started")
    assert stack.airflow.wait_for_run("rtx_never_started", run_id, 120) == "failed", stack.logs()
    _, line = _wait_rtx_line(stack, "rtx_never_started", run_id, "cannot_start")
    assert "the task did not run: the task never started (2 failed starts)" in line["event"], line
    assert "attempt 1 (runner " in line["event"] and "attempt 2 (runner " in line["event"]
    assert "launch refused by RTX_TEST_FAIL_LAUNCHES" in line["event"]


def test_lost_runner_reason_is_appended_to_the_task_log(stack):
    doomed = stack.daemon(
        "runner-doomed",
        "runner",
        "--queue",
        "doomed",
        "--name",
        "runner-doomed",
        RTX_LEASE_TIMEOUT="8",
        RTX_HEARTBEAT_INTERVAL="1",
    )
    wait_runners(stack, "runner-doomed")
    run_id = stack.airflow.trigger("rtx_runner_lost")
    try:
        wait_for(
            lambda: "hangs-started" in _log_text(stack, "rtx_runner_lost", run_id, "hangs"),
            120,
            interval=0.5,
            what="the task running on runner-doomed",
        )
    except AssertionError:
        print(
            query(
                stack.airflow.database_url,
                "SELECT task_id, state, runner_id, pid, reason FROM runtime_executor.allocations",
            )
        )
        print(_log_text(stack, "rtx_runner_lost", run_id, "hangs"))
        print(stack.logs())
        raise
    pid = query(
        stack.airflow.database_url,
        "SELECT pid FROM runtime_executor.allocations WHERE dag_id = 'rtx_runner_lost' AND run_id = %(r)s",
        {"r": run_id},
    )[0][0]
    # the host goes away: the runner and the task's own process group, at once
    doomed.kill()
    os.killpg(pid, signal.SIGKILL)
    assert stack.airflow.wait_for_run("rtx_runner_lost", run_id, 120) == "failed", stack.logs()
    body, line = _wait_rtx_line(stack, "rtx_runner_lost", run_id, "hangs")
    assert "runner was lost" in line["event"] and "runner-doomed" in line["event"], line
    text = json.dumps(body)
    assert text.index("hangs-started") < text.index(RTX_LINE)  # appended after the task's own lines
