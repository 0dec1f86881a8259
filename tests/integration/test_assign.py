"""The allocator's guarded assignment (queries/assign.sql): it finds claimed rows by their ctid, and
only ever moves a row that is still 'unassigned' and is the id the claim returned."""

from __future__ import annotations

from tests.integration.conftest import register_runner
from tests.support.allocations import insert_allocations, lock_rows


def _states(rtx, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    rows = rtx.rows(
        "SELECT id, state, runner_id FROM {schema}.allocations WHERE id = ANY(%s::uuid[])", (ids,)
    )
    return {str(r["id"]): (r["state"], r["runner_id"] and str(r["runner_id"])) for r in rows}


def test_assign_moves_only_unassigned_rows_it_claimed(rtx, rtx_db):
    runner_id = register_runner(rtx_db)
    ids = insert_allocations(rtx_db, 3)
    with rtx_db.transaction() as gw:
        claimed = lock_rows(gw, ids)
        # the first row changed after the claim's read (not possible for a real claim, which holds
        # the row lock, but the guard must not depend on that)
        gw.conn.execute(
            f'UPDATE "{gw.schema}".allocations SET state = %s WHERE id = %s', ("cancelled", claimed[0][1])
        )
        # a location that holds another row than the id asked for: the id guard refuses it
        assert gw.assign([claimed[1][0]], [claimed[2][1]], [runner_id]) == 0
        assigned = gw.assign([c[0] for c in claimed], [c[1] for c in claimed], [runner_id] * 3)
    assert assigned == 2
    states = _states(rtx, ids)
    assert states[str(claimed[0][1])] == ("cancelled", None)
    assert states[str(claimed[1][1])] == ("assigned", runner_id)
    assert states[str(claimed[2][1])] == ("assigned", runner_id)


def test_assign_with_a_stale_ctid_assigns_nothing(rtx, rtx_db):
    runner_id = register_runner(rtx_db)
    [allocation] = insert_allocations(rtx_db, 1)
    with rtx_db.transaction() as gw:
        [(old_ctid, row_id)] = lock_rows(gw, [allocation])
        # an update writes a new row version elsewhere: the old location is no longer this row
        gw.conn.execute(f'UPDATE "{gw.schema}".allocations SET priority_weight = 7 WHERE id = %s', (row_id,))
        assert gw.assign([old_ctid], [row_id], [runner_id]) == 0
        [(new_ctid, _)] = lock_rows(gw, [allocation])
        assert new_ctid != old_ctid
        assert gw.assign([new_ctid], [row_id], [runner_id]) == 1
    assert _states(rtx, [allocation]) == {allocation: ("assigned", runner_id)}
    events = rtx.rows(
        "SELECT from_state, to_state, runner_id FROM {schema}.allocation_events WHERE allocation_id = %s ORDER BY id",
        (allocation,),
    )
    assert [(e["from_state"], e["to_state"], e["runner_id"] and str(e["runner_id"])) for e in events] == [
        (None, "unassigned", None),
        ("unassigned", "assigned", runner_id),
    ]
