"""Issue 11, item 8: finished rows never grow without bound.

Every terminal allocation past retention is pruned, reported or not (an unreported one, e.g. of a
scheduler that died and was never adopted, after the longer ``unreported_retention``); deletes run
in batches, each its own short transaction, in the allocator's own prune loop, apart from rescue.
(Timings: bench/prune.py, figures in docs/reliability.md.)
"""

from __future__ import annotations

from dataclasses import replace

from allocator.service import Allocator
from runtime_executor.loop import Loop
from tests.support.allocations import insert_allocations

DAY = 86400.0


def _finish(rtx, ids: list[str], *, state: str, days_ago: float, **columns) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in columns)
    rtx.rows(
        "UPDATE {schema}.allocations SET state = %(state)s,"
        " finished_at = clock_timestamp() - make_interval(secs => %(ago)s)"
        + (f", {sets}" if sets else "")
        + " WHERE id = ANY(%(ids)s::uuid[])",
        {"state": state, "ago": days_ago * DAY, "ids": ids, **columns},
    )


def _left(rtx, ids: list[str]) -> set[str]:
    return {
        str(r["id"])
        for r in rtx.rows("SELECT id FROM {schema}.allocations WHERE id = ANY(%s::uuid[])", (ids,))
    }


def _prune_all(allocator: Allocator) -> None:
    while allocator.prune_pass():
        pass


def test_every_terminal_row_past_retention_is_pruned_reported_or_not(rtx, rtx_db):
    settings = replace(rtx.settings, retention=DAY, unreported_retention=7 * DAY)
    reported, dead_scheduler_old, dead_scheduler_recent, revoked_then_lost, cancelled, young, running = (
        insert_allocations(rtx_db, 1) for _ in range(7)
    )
    _finish(rtx, reported, state="succeeded", days_ago=2, reported_state="succeeded")
    # a scheduler that died and was never adopted: its outcomes were never reported
    _finish(rtx, dead_scheduler_old, state="failed", days_ago=8, scheduler_job_id=999)
    _finish(rtx, dead_scheduler_recent, state="failed", days_ago=2, scheduler_job_id=999)
    # revoked while running, then its runner was lost: nothing is ever reported for it
    _finish(
        rtx, revoked_then_lost, state="lost", days_ago=2, cancel_requested=True, reported_state="cancelled"
    )
    _finish(rtx, cancelled, state="cancelled", days_ago=2, cancel_requested=True, reported_state="cancelled")
    _finish(rtx, young, state="succeeded", days_ago=0.5, reported_state="succeeded")
    rtx.rows(
        "UPDATE {schema}.allocations SET state = 'running', created_at = created_at - interval '30 days'"
        " WHERE id = ANY(%s::uuid[])",
        (running,),
    )
    rtx.rows(
        "UPDATE {schema}.allocation_events SET at = at - interval '2 days' WHERE allocation_id = %s", reported
    )
    everything = (
        reported
        + dead_scheduler_old
        + dead_scheduler_recent
        + revoked_then_lost
        + cancelled
        + young
        + running
    )
    allocator = Allocator(settings)
    try:
        _prune_all(allocator)
    finally:
        allocator.stop()
    assert _left(rtx, everything) == set(dead_scheduler_recent + young + running)
    events = rtx.rows(
        "SELECT count(*) AS n FROM {schema}.allocation_events WHERE allocation_id = %s", reported
    )
    assert events[0]["n"] == 0


def test_prune_deletes_in_batches_each_its_own_transaction(rtx, rtx_db):
    ids = insert_allocations(rtx_db, 25)
    _finish(rtx, ids, state="succeeded", days_ago=2, reported_state="succeeded")
    rtx.rows("UPDATE {schema}.allocation_events SET at = at - interval '2 days'")
    counts = []
    with rtx_db.statements() as gw:
        while n := gw.prune_allocations(DAY, 7 * DAY, limit=10):
            counts.append(n)
        events = gw.prune_events(DAY, limit=10)
    assert counts == [10, 10, 5]
    assert events == 10


def test_the_events_prune_uses_an_index(rtx, rtx_db):
    from runtime_executor.db.gateway import query

    insert_allocations(rtx_db, 50)
    rtx.rows("ANALYZE {schema}.allocation_events")
    sql = query("prune_events", rtx.schema)
    with rtx_db.statements() as gw:
        gw.conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether an index path exists
        plan = "\n".join(r[0] for r in gw.conn.execute("EXPLAIN " + sql, {"retention": DAY, "limit": 10}))
        gw.conn.execute("RESET enable_seqscan")
    assert "allocation_events_at" in plan, plan


def test_prune_has_its_own_loop_apart_from_rescue(rtx, rtx_db):
    """Rescue (upkeep) never waits behind a prune: pruning is a loop of its own."""
    settings = replace(rtx.settings, retention=DAY)
    ids = insert_allocations(rtx_db, 3)
    _finish(rtx, ids, state="succeeded", days_ago=2, reported_state="succeeded")
    allocator = Allocator(settings)
    try:
        assert isinstance(allocator.prune, Loop) and allocator.prune is not allocator.upkeep
        allocator.upkeep_pass()
        assert _left(rtx, ids) == set(ids)  # upkeep does not prune
        _prune_all(allocator)
        assert _left(rtx, ids) == set()
    finally:
        allocator.stop()
