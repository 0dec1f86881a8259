"""allocator.parallelism: a scheduler's [core] parallelism over one pass's placements (no database)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allocator.model import Placement
from allocator.parallelism import full_schedulers, within_parallelism

JOBS = (1, 2, None)  # None: a row without a scheduler (never capped)


def _rows(specs):
    """[(job, cap)] -> placements in order, rows by id."""
    rows = {f"a{i}": {"scheduler_job_id": job, "max_running": cap} for i, (job, cap) in enumerate(specs)}
    return [Placement(rid, "r1") for rid in rows], rows


def test_keeps_placements_in_order_up_to_each_schedulers_room():
    placements, rows = _rows([(1, 3), (2, 2), (1, 3), (1, 3), (None, None), (2, 2), (2, 2), (1, None)])
    kept = within_parallelism(placements, rows, {1: 1, 2: 0})
    # scheduler 1 has 1 of 3 running: two more; scheduler 2 none of 2: two; uncapped rows always
    assert [p.request_id for p in kept] == ["a0", "a1", "a2", "a4", "a5", "a7"]


def test_a_capped_row_of_a_scheduler_the_pass_did_not_count_waits():
    placements, rows = _rows([(3, 10), (None, None)])
    assert [p.request_id for p in within_parallelism(placements, rows, {})] == ["a1"]


def test_full_schedulers_are_those_at_or_over_their_figure():
    assert full_schedulers({1: 3, 2: 5, 3: 1}, {1: 3, 2: 4, 3: 2}) == [1, 3]
    assert full_schedulers({4: 2}, {}) == []


@given(
    specs=st.lists(st.tuples(st.sampled_from(JOBS), st.integers(1, 6)), max_size=40),
    running=st.fixed_dictionaries({1: st.integers(0, 8), 2: st.integers(0, 8)}),
)
def test_never_over_a_cap_and_never_holds_back_a_row_with_room(specs, running):
    caps = {1: 4, 2: 2}
    specs = [(job, caps[job] if job is not None else None) for job, _ in specs]
    placements, rows = _rows(specs)
    kept = within_parallelism(placements, rows, running)
    kept_ids = [p.request_id for p in kept]
    assert kept_ids == [p.request_id for p in placements if p.request_id in set(kept_ids)]  # order kept
    for job, cap in caps.items():
        mine = [rid for rid in kept_ids if rows[rid]["scheduler_job_id"] == job]
        offered = sum(1 for job_, _ in specs if job_ == job)
        assert len(mine) == min(offered, max(0, cap - running[job]))  # all the room used, no more
    assert all(rid in kept_ids for rid, row in rows.items() if row["scheduler_job_id"] is None)
