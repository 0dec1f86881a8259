"""A start that failed before any task code ran is retried by rtx, not by Airflow (issue 11).

The runner's launch is made to fail for real with ``RTX_TEST_FAIL_LAUNCHES=N`` (a test-only hook:
the first N launches raise OSError before a task process gets its workload). The allocation row is
the task's Airflow try: placed again, it succeeds as the same row, with the same try number.
"""

from __future__ import annotations

from testing.daemons import query
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}
HOOK = "launch refused by RTX_TEST_FAIL_LAUNCHES (test only)"


def _row(db_url: str, allocation_id: str) -> tuple:
    [row] = query(
        db_url,
        "SELECT state, try_number, start_attempts, start_failures, reason FROM runtime_executor.allocations"
        " WHERE id = %(a)s",
        {"a": allocation_id},
    )
    return row


def _transitions(db_url: str, allocation_id: str) -> list[tuple[str | None, str]]:
    return query(
        db_url,
        "SELECT from_state, to_state FROM runtime_executor.allocation_events WHERE allocation_id = %(a)s ORDER BY id",
        {"a": allocation_id},
    )


def test_a_start_that_failed_before_it_ran_is_placed_again_and_succeeds_on_the_same_try(
    db, daemons, tmp_path
):
    record = tmp_path / "record.txt"
    daemons.allocator(**FAST)
    daemons.runner(name="r1", RTX_TEST_FAIL_LAUNCHES="2", **FAST)  # start_retries: the default, 3
    [runner_id] = wait_runners(daemons.db_url, 1)
    [task] = insert_allocations(db, 1, workload={"record": str(record)})
    assert wait_states(daemons.db_url, [task], DONE, timeout=30) == {task: "succeeded"}
    state, try_number, attempts, failures, reason = _row(daemons.db_url, task)
    assert (state, try_number, attempts, reason) == ("succeeded", 1, 2, None)
    assert failures == [
        f"attempt {n} (runner {runner_id}): could not start task process: {HOOK}" for n in (1, 2)
    ]
    assert [e[1] for e in _transitions(daemons.db_url, task)] == [
        "unassigned",
        "assigned",
        "running",
        "unassigned",  # first start failed: placed again
        "assigned",
        "running",
        "unassigned",
        "assigned",
        "running",
        "succeeded",
    ]
    assert [r[1] for r in read_records(record) if r[0] == "start"] == [task]  # its code ran once


def test_more_failed_starts_than_start_retries_fail_with_every_attempts_reason(db, daemons, tmp_path):
    record = tmp_path / "record.txt"
    daemons.allocator(**FAST)
    daemons.runner(name="r1", RTX_TEST_FAIL_LAUNCHES="3", RTX_START_RETRIES="2", **FAST)
    [runner_id] = wait_runners(daemons.db_url, 1)
    [task] = insert_allocations(db, 1, workload={"record": str(record)})
    assert wait_states(daemons.db_url, [task], DONE, timeout=30) == {task: "failed"}
    state, try_number, attempts, failures, reason = _row(daemons.db_url, task)
    assert (state, try_number, attempts) == ("failed", 1, 3)  # placed again twice, then failed
    attempts_text = [
        f"attempt {n} (runner {runner_id}): could not start task process: {HOOK}" for n in (1, 2, 3)
    ]
    assert failures == attempts_text
    assert reason == "the task never started (3 failed starts): " + "; ".join(attempts_text)
    assert [e[1] for e in _transitions(daemons.db_url, task)].count("unassigned") == 3  # insert + 2 put back
    assert read_records(record) == []  # no task code ever ran
    # the runner itself is fine: once the hook's three failures are spent, the next task runs
    [ok] = insert_allocations(db, 1, workload={"record": str(record)})
    assert wait_states(daemons.db_url, [ok], DONE, timeout=30) == {ok: "succeeded"}
