"""The status snapshot (``rtx status`` and the Executor Status page) counts exactly under load.

100,000 live allocations, inserted with ``generate_series``: far more than the 1,000 the snapshot
lists. Every count comes from an aggregate, so it is exact; only the row lists are cut (issue 11,
item 10: the counts used to be taken from the cut list, and showed 0 unassigned).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from runtime_executor.db.connection import Database
from runtime_executor.plugin.app import _StatusReader
from runtime_executor.status import snapshot
from runtime_executor.status_text import render_status

LIVE = {"assigned": 100, "running": 1_500, "unassigned_default": 98_000, "unassigned_etl": 400}
UNSCHEDULABLE_ETL = 100
FINISHED = 5_000


def _fill(db: Database) -> str:
    runner_id = str(uuid.uuid4())
    with db.transaction() as gw:
        gw.register_runner(
            id=runner_id,
            name="big",
            hostname="test-host",
            pid=1,
            queues=["default", "etl"],
            slots=64,
            cpu=64.0,
            memory_mb=1 << 20,
            version="test",
            lease_timeout=600.0,
        )
        insert = (
            f'INSERT INTO "{gw.schema}".allocations'
            " (id, dag_id, task_id, run_id, map_index, try_number, queue, slots, cpu, memory_mb, state,"
            "  runner_id, started_at, finished_at, unschedulable_reason)"
            " SELECT gen_random_uuid(), 'load', 't' || n, 'manual__1', -1, 1, %(queue)s, 1, 0, 0, %(state)s,"
            "        %(runner)s::uuid, CASE WHEN %(state)s IN ('running', 'succeeded') THEN clock_timestamp() END,"
            "        CASE WHEN %(state)s = 'succeeded' THEN clock_timestamp() END,"
            "        CASE WHEN n <= %(unschedulable)s THEN 'no live runner is large enough' END"
            "   FROM generate_series(1, %(count)s) AS n"
        )
        for state, queue, count, runner, unschedulable in [
            ("assigned", "default", LIVE["assigned"], runner_id, 0),
            ("running", "default", LIVE["running"], runner_id, 0),
            ("unassigned", "default", LIVE["unassigned_default"], None, 0),
            ("unassigned", "etl", LIVE["unassigned_etl"], None, UNSCHEDULABLE_ETL),
            ("succeeded", "default", FINISHED, runner_id, 0),
        ]:
            gw.conn.execute(
                insert,
                {
                    "queue": queue,
                    "state": state,
                    "count": count,
                    "runner": runner,
                    "unschedulable": unschedulable,
                },
            )
        gw.conn.execute(f'ANALYZE "{gw.schema}".allocations')
    return runner_id


@pytest.fixture
def loaded(db) -> tuple[Database, str]:
    return db, _fill(db)


def test_counts_are_exact_at_100000_live_allocations(loaded):
    db, runner_id = loaded
    with db.transaction() as gw:
        snap = snapshot(gw)

    unassigned = LIVE["unassigned_default"] + LIVE["unassigned_etl"]
    assert sum(LIVE.values()) == 100_000
    assert snap["totals"]["allocations"] == {
        "assigned": LIVE["assigned"],
        "running": LIVE["running"],
        "unassigned": unassigned,
        "succeeded": FINISHED,
    }
    assert snap["queues"]["default"]["unassigned"] == LIVE["unassigned_default"]
    assert snap["queues"]["etl"]["unassigned"] == LIVE["unassigned_etl"]
    assert snap["queues"]["etl"]["unschedulable"] == UNSCHEDULABLE_ETL
    assert snap["queues"]["default"]["unschedulable"] == 0
    assert snap["totals"]["unschedulable"] == UNSCHEDULABLE_ETL
    (runner,) = snap["runners"]
    assert runner["id"] == runner_id
    assert runner["allocation_count"] == LIVE["assigned"] + LIVE["running"]
    assert runner["reserved"]["slots"] == LIVE["assigned"] + LIVE["running"]
    # the lists stay bounded, and say so
    assert len(snap["unassigned"]) + len(runner["allocations"]) <= 1000
    assert snap["totals"]["truncated"] is True

    # rtx status (text) shows the exact numbers too
    text = render_status(snap)
    all_row = next(line for line in text.splitlines() if line.startswith("all"))
    assert str(unassigned) in all_row
    assert f"first {len(snap['unassigned'])} of {unassigned}" in text


def test_small_snapshot_is_not_truncated(db):
    with db.transaction() as gw:
        snap = snapshot(gw)
    assert snap["totals"]["truncated"] is False
    assert snap["totals"]["unschedulable"] == 0


def test_status_endpoint_read_stays_fast_at_100000_live_allocations(loaded, monkeypatch):
    """What ``GET /runtime-executor/api/status`` does (the page's reader: a read-only transaction
    with its statement timeout, then JSON), timed. The figure is in docs/status-page.md."""
    db, _ = loaded
    monkeypatch.setenv("RTX_DATABASE_URL", db.settings.database_url)
    monkeypatch.setenv("RTX_SCHEMA", db.settings.schema)
    reader = _StatusReader()
    try:
        reader.read()  # the first read opens the connection
        times = []
        for _ in range(5):
            started = time.perf_counter()
            body = json.dumps(reader.read())
            times.append(time.perf_counter() - started)
    finally:
        reader.close()
    times.sort()
    print(
        f"\nstatus read + JSON at 100,000 live allocations: median {times[2] * 1000:.0f} ms,"
        f" max {times[-1] * 1000:.0f} ms, {len(body) // 1024} KiB"
    )
    assert times[2] < 1.0, times


def test_the_status_read_is_read_only_and_bounded_for_its_transaction_only(db):
    """The page's reader (``Gateway.read_only``, a named query): nothing in the transaction can
    write, every statement has the page's timeout, and both end with the transaction."""
    import psycopg

    with db.transaction() as gw:
        session_timeout = gw.conn.execute("SHOW statement_timeout").fetchone()[0]
    assert session_timeout != "1234ms"
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), db.transaction() as gw:
        gw.read_only(1234)
        assert gw.conn.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
        assert gw.conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"
        gw.prune_events(0.0, 1)  # any write
    with db.transaction() as gw:
        assert gw.conn.execute("SHOW statement_timeout").fetchone()[0] == session_timeout
        assert gw.conn.execute("SHOW transaction_read_only").fetchone()[0] == "off"
