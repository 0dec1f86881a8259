"""The core path with real Airflow 3.3: scheduler -> shim -> Postgres -> allocator -> runner -> task."""

from __future__ import annotations

import json
import re

import pytest

from runner.cgroups.isolation import find_backend
from tests.support.daemons import query, wait_for

pytestmark = pytest.mark.e2e


def _run(stack, dag_id: str, timeout: float = 180) -> tuple[str, str]:
    run_id = stack.airflow.trigger(dag_id)
    try:
        return run_id, stack.airflow.wait_for_run(dag_id, run_id, timeout)
    except Exception:
        print(stack.logs())
        raise


def test_tasks_with_different_requests_all_succeed(stack):
    run_id, state = _run(stack, "rtx_core")
    tis = stack.airflow.task_instances("rtx_core", run_id)
    assert state == "success", (tis, stack.logs())
    assert {t: ti["state"] for t, ti in tis.items()} == {
        "small": "success",
        "big": "success",
        "airflow_resources": "success",
        "placement": "success",
    }
    # the DAG run is done when the tasks report success; the runner records the process exits just after
    rows = wait_for(
        lambda: (
            (
                r := query(
                    stack.airflow.database_url,
                    "SELECT task_id, slots, cpu, memory_mb, state, runner_id::text, id::text FROM runtime_executor.allocations"
                    " WHERE dag_id = 'rtx_core' AND run_id = %(r)s",
                    {"r": run_id},
                )
            )
            and all(row[4] != "running" for row in r)
            and r
        ),
        30,
    )
    by_task = {r[0]: r for r in rows}
    assert by_task["small"][1:5] == (1, 0.5, 256, "succeeded")
    assert by_task["big"][1:5] == (2, 1.5, 1024, "succeeded")
    assert by_task["airflow_resources"][1:5] == (1, 1.0, 512, "succeeded")
    # the allocation id is the external executor id Airflow pre-assigned to the task instance
    external_ids = dict(
        query(
            stack.airflow.database_url,
            "SELECT task_id, external_executor_id FROM task_instance WHERE dag_id = 'rtx_core' AND run_id = %(r)s",
            {"r": run_id},
        )
    )
    assert {t: by_task[t][6] for t in tis} == external_ids
    # the task saw its allocation and runner in its environment (and not rtx's database URL)
    log = stack.airflow.task_log("rtx_core", run_id, "placement")
    assert f"RTX_ALLOCATION_ID={by_task['placement'][6]}" in log
    assert f"RTX_RUNNER_ID={by_task['placement'][5]}" in log


def test_task_log_is_served_through_the_rest_api(stack):
    run_id, state = _run(stack, "rtx_core")
    assert state == "success"
    log = stack.airflow.task_log("rtx_core", run_id, "small")
    assert "small-task-ran" in log


def test_failing_task_ends_failed(stack):
    run_id, state = _run(stack, "rtx_failing")
    assert state == "failed"
    tis = stack.airflow.task_instances("rtx_failing", run_id)
    assert tis["fails"]["state"] == "failed"
    assert "about-to-fail" in stack.airflow.task_log("rtx_failing", run_id, "fails")


def test_task_with_one_retry_fails_then_succeeds(stack):
    run_id, state = _run(stack, "rtx_retry")
    tis = stack.airflow.task_instances("rtx_retry", run_id)
    assert state == "success", stack.logs()
    assert tis["flaky"]["state"] == "success"
    assert tis["flaky"]["try_number"] == 2
    tries = query(
        stack.airflow.database_url,
        "SELECT try_number, state FROM runtime_executor.allocations WHERE dag_id = 'rtx_retry' AND run_id = %(r)s"
        " ORDER BY try_number",
        {"r": run_id},
    )
    assert [t[0] for t in tries] == [1, 2]


def test_bad_request_fails_that_task_at_once_with_a_clear_reason(stack):
    run_id, state = _run(stack, "rtx_bad_request")
    tis = stack.airflow.task_instances("rtx_bad_request", run_id)
    assert tis["too_many_slots"]["state"] == "failed"
    assert tis["fine"]["state"] == "success"  # the scheduler and the daemons kept going
    reason = query(
        stack.airflow.database_url,
        "SELECT reason FROM runtime_executor.allocations WHERE dag_id = 'rtx_bad_request' AND task_id = 'too_many_slots'",
    )[0][0]
    assert "rtx_bad_request.too_many_slots" in reason and "slots=65" in reason
    # visible to the user in the task instance's audit log
    events = stack.airflow.api(
        "GET", "/api/v2/eventLogs", params={"dag_id": "rtx_bad_request", "limit": 100}
    ).json()
    assert "slots=65" in json.dumps(events)


def _placements(stack, run_id: str) -> list[tuple[str, float, float]]:
    """(runner id, start, end) per task, from what each task printed about itself."""
    import re

    out = []
    for i in range(3):
        log = stack.airflow.task_log("rtx_packing", run_id, f"hold_{i}")
        runner = re.search(r"PLACED runner=([0-9a-f-]+) start", log).group(1)
        start = float(re.search(r"start=([0-9.]+)", log).group(1))
        end = float(re.search(r"end=([0-9.]+)", log).group(1))
        out.append((runner, start, end))
    return out


def test_strategies_place_as_described_and_never_overrun_a_runner(stack):
    """runner-small: 4 slots, 2048 MB; runner-large: 8 slots, 6144 MB; three tasks of 1000 MB at once.
    EvenSpread puts each on the least allocated runner after placing it: large, large, small.
    MaxPacking fills the most allocated runner that fits: small, small (2000 of 2048 MB), then large."""
    url = stack.airflow.database_url
    names = dict(query(url, "SELECT id::text, name FROM runtime_executor.runners WHERE state = 'active'"))
    capacity = dict(query(url, "SELECT id::text, memory_mb FROM runtime_executor.runners"))
    results = {}
    for strategy in ("EvenSpreadStrategy", "MaxPackingStrategy"):
        # start from idle runners: earlier task processes may still be exiting after their runs ended
        wait_for(
            lambda: (
                query(
                    url,
                    "SELECT count(*) FROM runtime_executor.allocations WHERE state IN ('assigned', 'running')",
                )
                == [(0,)]
            ),
            30,
        )
        for d in stack.daemons:
            if d.name.startswith("allocator") and d.proc.poll() is None:
                d.stop()
        stack.daemon(f"allocator-{strategy}", "allocator", "--strategy", strategy)
        run_id, state = _run(stack, "rtx_packing")
        assert state == "success", stack.logs()
        placements = _placements(stack, run_id)
        results[strategy] = sorted(names[r] for r, _, _ in placements)
        # from the tasks' own clocks: no runner ever held more memory than it has
        for runner in {r for r, _, _ in placements}:
            spans = [(s, e) for r, s, e in placements if r == runner]
            for t, _ in spans:
                at_once = sum(1 for s, e in spans if s <= t < e)
                assert at_once * 1000 <= capacity[runner]
    assert results["EvenSpreadStrategy"] == ["runner-large", "runner-large", "runner-small"]
    assert results["MaxPackingStrategy"] == ["runner-large", "runner-small", "runner-small"]


OOM = re.compile(r"killed: out of memory: used (\d+) MB, limit (\d+) MB \(reserved (\d+) MB\)")


def test_cgroup_isolation_oom_kills_the_task_over_its_memory_not_its_neighbour(stack, cgroup_root):
    """--isolation cgroup (docs/isolation.md): a task allocating 5x its reservation is killed by the kernel
    in its own cgroup while its neighbour on the same runner succeeds, and the reason names the OOM in
    the task's log (REST API, as the UI reads it) and on the allocation rtx reports to Airflow."""
    runner = stack.daemon(
        "runner-isolated", "runner", "--queue", "isolated", "--isolation", "cgroup", "--cgroup-root", cgroup_root,
        "--slots", "4", "--cpu", "2", "--memory", "2048", "--name", "runner-isolated",
    )  # fmt: skip
    wait_for(
        lambda: query(stack.airflow.database_url, "SELECT 1 FROM runtime_executor.runners WHERE name = 'runner-isolated'"
                      " AND state = 'active'"),
        60, what="the isolated runner",
    )  # fmt: skip
    run_id, state = _run(stack, "rtx_oom")
    assert state == "failed", stack.logs()
    tis = stack.airflow.task_instances("rtx_oom", run_id)
    assert (tis["hog"]["state"], tis["neighbour"]["state"]) == ("failed", "success"), stack.logs()
    [(reason, state)] = query(
        stack.airflow.database_url,
        "SELECT reason, state FROM runtime_executor.allocations WHERE dag_id = 'rtx_oom' AND task_id = 'hog'",
    )
    match = OOM.fullmatch(reason or "")
    assert state == "failed" and match and match.group(2, 3) == ("220", "200"), reason
    # the task's log, as the UI reads it, ends with the kernel's verdict
    log = stack.airflow.task_log("rtx_oom", run_id, "hog")
    assert "hog-allocating" in log and "hog-survived" not in log
    assert f"rtx: {reason}" in log, log[-3000:]
    assert "neighbour-done" in stack.airflow.task_log("rtx_oom", run_id, "neighbour")
    assert runner.stop() == 0
    assert find_backend(cgroup_root).children() == []
