"""The placement pass pipelined (Gateway.fetch_batch, Database.transaction(pipelined=True)): fewer
waits, the same statements in the same order, so the same invariants."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from runtime_executor.db.connection import Database
from tests.integration.conftest import register_runner
from tests.support.allocations import assign_to, insert_allocations, lock_rows


def test_reservations_read_in_the_locks_batch_see_what_the_locks_holder_committed(rtx, rtx_db):
    """A pass that waits for another allocator's placement lock must count what that allocator
    assigned before it let go: the reservations statement runs after the lock's, in the same round
    trip, with a snapshot of its own. (One statement for both would read the old sum: overfill.)"""
    runner_id = register_runner(rtx_db)
    [row] = insert_allocations(rtx_db, 1, slots=3, cpu=1.5, memory_mb=512)
    other = Database(rtx.settings, "rtx-test-other")
    result: dict = {}

    def second_pass() -> None:
        with other.transaction(pipelined=True) as gw:
            result["read"] = gw.lock_for_placement(["default"], [])

    try:
        with rtx_db.transaction() as gw:
            assert [str(r["id"]) for r in gw.lock_live_runners(["default"])] == [runner_id]
            assert assign_to(gw, [row], runner_id) == 1
            waiting = threading.Thread(target=second_pass)
            waiting.start()
            time.sleep(0.5)
            assert waiting.is_alive(), "the second pass did not wait for the placement lock"
        waiting.join(10)
        runners, reservations, in_flight = result["read"]
        assert [str(r["id"]) for r in runners] == [runner_id]
        [held] = reservations
        assert (str(held["runner_id"]), held["slots"], float(held["cpu"]), held["memory_mb"]) == (
            runner_id,
            3,
            1.5,
            512,
        )
        assert in_flight == {}
    finally:
        other.close()


def test_reservations_cover_a_locked_runner_whose_lease_ran_out(rtx, rtx_db):
    """What a runner holds is counted whatever its liveness: the lock reads it live, the next
    statement must not drop it (it would count as empty)."""
    runner_id = register_runner(rtx_db)
    [row] = insert_allocations(rtx_db, 1, slots=2)
    with rtx_db.transaction() as gw:
        assert assign_to(gw, [row], runner_id) == 1
    rtx.rows("UPDATE {schema}.runners SET lease_expires_at = clock_timestamp() - interval '1 s'")
    with rtx_db.transaction(pipelined=True) as gw:
        runners, reservations, _ = gw.lock_for_placement(["default"], [])
    assert runners == []
    assert [(str(r["runner_id"]), r["slots"]) for r in reservations] == [(runner_id, 2)]


def test_parallelism_is_counted_under_its_lock_in_the_same_batch(rtx, rtx_db):
    runner_id = register_runner(rtx_db)
    ids = insert_allocations(rtx_db, 3, scheduler_job_id=7, max_running=4)
    with rtx_db.transaction() as gw:
        assert assign_to(gw, ids[:2], runner_id) == 2
    with rtx_db.transaction(pipelined=True) as gw:
        queues, capped = gw.pending_work()
        _, _, in_flight = gw.lock_for_placement(queues, list(capped))
    assert (queues, capped, in_flight) == (["default"], {7: 4}, {7: 2})


def test_a_statement_sent_with_the_commit_that_fails_rolls_the_whole_pass_back(rtx, rtx_db):
    runner_id = register_runner(rtx_db)
    first, second = insert_allocations(rtx_db, 2)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation), rtx_db.transaction(pipelined=True) as gw:
        [(ctid, row_id)] = lock_rows(gw, [first])
        gw.assign_at_commit([ctid], [row_id], [runner_id])  # a good one, sent without waiting
        gw.assign_at_commit(["not a tid"], [second], [runner_id])  # fails at the COMMIT
    states = {str(r["id"]): r["state"] for r in rtx.rows("SELECT id, state FROM {schema}.allocations")}
    assert states == {first: "unassigned", second: "unassigned"}
    # the connection is usable again, and the same statements commit
    with rtx_db.transaction(pipelined=True) as gw:
        rows = lock_rows(gw, [first, second])
        gw.assign_at_commit([r[0] for r in rows], [r[1] for r in rows], [runner_id] * 2)
    assert {r["state"] for r in rtx.rows("SELECT state FROM {schema}.allocations")} == {"assigned"}


def test_single_statements_in_a_pipelined_transaction_answer_as_without(rtx, rtx_db):
    """fetch and execute wait for their own answer in pipeline mode: rows and rowcount are real."""
    runner_id = register_runner(rtx_db)
    ids = insert_allocations(rtx_db, 3)
    with rtx_db.transaction(pipelined=True) as gw:
        assert [str(r["id"]) for r in gw.lock_live_runners()] == [runner_id]
        assert [str(r["id"]) for r in gw.mark_unschedulable({ids[0]: "needs 99 slots"})] == [ids[0]]
        assert gw.clear_unschedulable(ids) == 1  # only the one marked matches the guard
        assert assign_to(gw, ids, runner_id) == 3


def test_a_block_that_raises_after_sending_commits_nothing(rtx, rtx_db):
    """The pass's own code failing (a bug, a stop) between sending a statement and the COMMIT: the
    statement has run by then (the pipeline's end sends it), and the transaction is rolled back."""
    runner_id = register_runner(rtx_db)
    [row] = insert_allocations(rtx_db, 1)
    with pytest.raises(RuntimeError, match="strategy failed"), rtx_db.transaction(pipelined=True) as gw:
        [(ctid, row_id)] = lock_rows(gw, [row])
        gw.assign_at_commit([ctid], [row_id], [runner_id])
        raise RuntimeError("strategy failed")
    assert [r["state"] for r in rtx.rows("SELECT state FROM {schema}.allocations")] == ["unassigned"]
    with rtx_db.transaction() as gw:  # the connection is back in a clean state
        assert assign_to(gw, [row], runner_id) == 1
