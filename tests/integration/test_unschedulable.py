"""Unschedulable requests (placement.md): reported once with a per-dimension reason, placeable again
when a runner that fits joins, failed with that reason after the timeout; nothing behind them blocked."""

from __future__ import annotations

import json

from testing.daemons import query, wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}


def _reason(db_url: str, allocation: str) -> str | None:
    return query(
        db_url,
        "SELECT unschedulable_reason FROM runtime_executor.allocations WHERE id = %(a)s",
        {"a": allocation},
    )[0][0]


def test_too_big_request_is_reported_once_and_placed_when_a_runner_fits(db, daemons):
    allocator = daemons.allocator(**FAST)
    daemons.runner("--slots", "4", "--cpu", "2", "--memory", "2048", name="small", **FAST)
    wait_runners(daemons.db_url, 1)
    [big] = insert_allocations(db, 1, workload={}, cpu=8, memory_mb=1024, slots=2)
    reason = wait_for(lambda: _reason(daemons.db_url, big), 20, what="the unschedulable reason")
    assert (
        reason
        == 'needs cpu 8, memory 1024 MB, slots 2; largest runner in queue "default": cpu 2, memory 2048 MB, slots 4'
    )
    # work behind it is not blocked, and more passes do not log it again
    for _ in range(3):
        behind = insert_allocations(db, 2, workload={})
        assert set(wait_states(daemons.db_url, behind, DONE).values()) == {"succeeded"}
    logged = [
        line
        for line in allocator.log().splitlines()
        if '"allocation unschedulable"' in line and json.loads(line)["allocation_id"] == big
    ]
    assert len(logged) == 1
    assert query(
        daemons.db_url, "SELECT state FROM runtime_executor.allocations WHERE id = %(a)s", {"a": big}
    ) == [("unassigned",)]
    # a runner that fits joins: the request is placed and runs
    daemons.runner("--slots", "4", "--cpu", "8", "--memory", "4096", name="large", **FAST)
    assert wait_states(daemons.db_url, [big], DONE) == {big: "succeeded"}
    assert _reason(daemons.db_url, big) is None


def test_unschedulable_request_fails_with_its_reason_after_the_timeout(db, daemons):
    daemons.allocator(RTX_UNSCHEDULABLE_TIMEOUT="2", **FAST)
    daemons.runner(name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    [gpu] = insert_allocations(db, 1, workload={}, queue="gpu")
    [ok] = insert_allocations(db, 1, workload={})
    assert wait_states(daemons.db_url, [gpu, ok], DONE, timeout=30) == {gpu: "failed", ok: "succeeded"}
    with db.transaction() as gw:
        reported = {str(r["id"]): r for r in gw.report_outcomes(None)}
    assert reported[gpu]["state"] == "failed"
    assert reported[gpu]["reason"] == 'unschedulable for 2 s: no live runner serves queue "gpu"'
