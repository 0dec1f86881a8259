"""Issue 11, items 3 and 4: no allocation stays non-terminal on a runner that is not live.

Nothing can land on a runner once it is not live (``assign`` and ``start_assigned`` re-check it), and
whatever slipped in while rescue ran (two sessions interleaved with explicit transactions, as a
placement commit or a runner's start can interleave with rescue) is swept by the next upkeep pass,
as are the rows of a runner that stopped with work still on it.
"""

from __future__ import annotations

import threading
import time

import pytest

from runtime_executor.db.connection import Database
from testing.daemons import query, wait_for
from tests.integration.conftest import register_runner
from tests.support.allocations import assign_to, insert_allocations
from tests.support.fixtures import FAST, states, wait_states

STRANDED = """
SELECT a.id::text, a.state, a.runner_id::text
  FROM {schema}.allocations AS a
  LEFT JOIN {schema}.runners AS r ON r.id = a.runner_id
 WHERE a.state IN ('assigned', 'running')
   AND (r.id IS NULL OR r.state NOT IN ('active', 'draining') OR r.lease_expires_at <= clock_timestamp())
"""


def _stranded(rtx) -> list[dict]:
    """Non-terminal allocations on a runner that is not live."""
    return rtx.rows(STRANDED)


def _expire(rtx, runner_id: str) -> None:
    rtx.rows(
        "UPDATE {schema}.runners SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = %s",
        (runner_id,),
    )


def _rescue(db: Database) -> list[dict]:
    with db.transaction() as gw:
        return gw.rescue_expired_runners()


def _runner_state(rtx, runner_id: str) -> str:
    return rtx.rows("SELECT state FROM {schema}.runners WHERE id = %s", (runner_id,))[0]["state"]


@pytest.fixture
def second_db(rtx, rtx_db):
    database = Database(rtx.settings, "rtx-test-rescue")
    try:
        yield database
    finally:
        database.close()


def test_a_placement_that_commits_after_rescue_is_swept_by_the_next_pass(rtx, rtx_db, second_db):
    """Placement assigns while the runner is live, rescue marks the runner lost before placement
    commits (its snapshot cannot see the uncommitted assignment): the next pass returns it."""
    runner_id = register_runner(rtx_db)
    [allocation] = insert_allocations(rtx_db, 1)
    with rtx_db.transaction() as placement:
        assert [str(r["id"]) for r in placement.lock_live_runners()] == [runner_id]
        assert assign_to(placement, [allocation], runner_id) == 1
        _expire(rtx, runner_id)
        rescued = _rescue(second_db)  # another session, while placement's transaction is open
        assert [r["outcome"] for r in rescued] == ["runner"]
    assert _runner_state(rtx, runner_id) == "lost"
    assert len(_stranded(rtx)) == 1  # it slipped in, as it can
    assert [(str(r["id"]), r["outcome"]) for r in _rescue(second_db)] == [(allocation, "returned")]
    assert _stranded(rtx) == []
    assert rtx.allocation(allocation)["state"] == "unassigned"


def test_assign_to_a_runner_that_is_no_longer_live_assigns_nothing(rtx, rtx_db, second_db):
    """Placement read the runner live, rescue commits it lost before placement assigns: the
    assignment re-checks the runner in the same transaction and assigns nothing."""
    runner_id = register_runner(rtx_db)
    [allocation] = insert_allocations(rtx_db, 1)
    with rtx_db.transaction() as placement:
        assert [str(r["id"]) for r in placement.lock_live_runners()] == [runner_id]
        _expire(rtx, runner_id)
        _rescue(second_db)
        assert assign_to(placement, [allocation], runner_id) == 0
    assert rtx.allocation(allocation)["state"] == "unassigned"
    assert _stranded(rtx) == []


def test_assign_to_a_runner_whose_lease_expired_assigns_nothing(rtx, rtx_db):
    runner_id = register_runner(rtx_db)
    [allocation] = insert_allocations(rtx_db, 1)
    with rtx_db.transaction() as placement:
        placement.lock_live_runners()
        _expire(rtx, runner_id)  # not yet rescued
        assert assign_to(placement, [allocation], runner_id) == 0


def test_start_assigned_on_a_runner_that_is_not_live_starts_nothing(rtx, rtx_db):
    runner_id = register_runner(rtx_db)
    ids = insert_allocations(rtx_db, 2)
    with rtx_db.transaction() as gw:
        assert assign_to(gw, ids, runner_id) == 2
    _expire(rtx, runner_id)  # lease expired, not yet rescued
    with rtx_db.transaction() as gw:
        assert gw.start_assigned(runner_id) == []
    rtx.rows("UPDATE {schema}.runners SET lease_expires_at = clock_timestamp() + interval '1 minute'")
    rtx.rows("UPDATE {schema}.runners SET state = 'stopped' WHERE id = %s", (runner_id,))
    with rtx_db.transaction() as gw:
        assert gw.start_assigned(runner_id) == []
    assert {rtx.allocation(i)["state"] for i in ids} == {"assigned"}


def test_a_start_that_commits_while_rescue_runs_is_swept_by_the_next_pass(rtx, rtx_db, second_db):
    """The runner's start (assigned -> running) is uncommitted when rescue marks the runner lost:
    rescue cannot return the row (it is being started) nor mark it lost (its snapshot says
    assigned). The next pass marks it lost."""
    runner_id = register_runner(rtx_db)
    [allocation] = insert_allocations(rtx_db, 1)
    with rtx_db.transaction() as gw:
        assert assign_to(gw, [allocation], runner_id) == 1
    result: list = []
    with rtx_db.transaction() as runner:
        assert [str(r["id"]) for r in runner.start_assigned(runner_id)] == [allocation]
        _expire(rtx, runner_id)
        rescue = threading.Thread(target=lambda: result.append(_rescue(second_db)))
        rescue.start()
        time.sleep(0.5)  # rescue runs (or waits for the row) while the start is uncommitted
    rescue.join(10)
    assert not rescue.is_alive()
    assert _runner_state(rtx, runner_id) == "lost"
    _rescue(second_db)
    assert _stranded(rtx) == []
    row = rtx.allocation(allocation)
    assert row["state"] == "lost"
    assert row["reason"] == f"runner r1 ({runner_id}) stopped heartbeating; its lease expired"


def test_a_runner_that_stopped_with_work_on_it_is_cleaned_up_by_upkeep(db, daemons):
    """Item 4: a runner row 'stopped' with one running and one assigned allocation (outcomes not
    flushed before the drain deadline, a process that would not die): the allocator's upkeep
    marks the running one lost (reported failed) and returns the assigned one, within the lease
    plus a few upkeep passes."""
    lease = float(FAST["RTX_LEASE_TIMEOUT"])
    daemons.allocator(**FAST)
    runner_id = register_runner(db, name="gone")
    with db.transaction() as gw:  # a lease as short as the daemons'
        gw.heartbeat_runner(runner_id, lease)
    running, assigned = insert_allocations(db, 2, queue="nobody-else-serves-this")
    with db.transaction() as gw:
        assert assign_to(gw, [running, assigned], runner_id) == 2
        gw.conn.execute(
            "UPDATE runtime_executor.allocations SET state = 'running', started_at = clock_timestamp() WHERE id = %s",
            [running],
        )
        assert gw.set_runner_state(runner_id, "stopped", ["active"])
    started = time.monotonic()
    wait_for(
        lambda: states(daemons.db_url, [running]) == {running: "lost"},
        lease + 10,
        what="the running row lost",
    )
    wait_states(daemons.db_url, [assigned], {"unassigned"}, timeout=5)
    assert time.monotonic() - started < lease + 5
    [(reason, runner_of_assigned)] = query(
        daemons.db_url,
        "SELECT (SELECT reason FROM runtime_executor.allocations WHERE id = %(r)s),"
        " (SELECT runner_id FROM runtime_executor.allocations WHERE id = %(a)s)",
        {"r": running, "a": assigned},
    )
    assert reason == f"runner gone ({runner_id}) stopped while the task was running"
    assert runner_of_assigned is None
    assert query(
        daemons.db_url, "SELECT state FROM runtime_executor.runners WHERE id = %(r)s", {"r": runner_id}
    ) == [("stopped",)]
    with db.transaction() as gw:
        [outcome] = gw.report_outcomes(None)
    assert (str(outcome["id"]), outcome["state"]) == (running, "lost")
