"""A NOTIFY channel per runner (migration 0004, runtime_executor.db.channels), and the idle runner
whose lease renewal stands in for its poll (heartbeat_runner.sql)."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from runtime_executor.db.channels import allocator_channel, runner_channel
from runtime_executor.db.migrate import migrate
from testing.daemons import query, wait_for
from tests.integration.conftest import register_runner, start_on_runner
from tests.support.allocations import assign_to, insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}
# A lease whose half leaves more than the fencing lead (kill grace 1 s + 1 s margin) and one heartbeat:
# with FAST's 3 s, every idle renewal would find starts held back and wake the work loop anyway.
LEASE = 6.0
IDLE = {**FAST, "RTX_LEASE_TIMEOUT": str(LEASE)}


@pytest.mark.parametrize("schema", ["runtime_executor", "a_schema_name_far_longer_than_nineteen_chars"])
def test_the_python_and_sql_channel_names_agree(db_url, migrated, schema):
    """Both sides name a runner's channel the same, also past 63 bytes (pg_notify refuses longer
    names, so there the md5 form is used)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        if schema != migrated.schema:
            migrate(conn, schema)
        for runner_id in (str(uuid.uuid4()), str(uuid.uuid4())):
            [(sql_name,)] = conn.execute(
                f"SELECT {schema}.runner_channel(%s, %s)", [schema, runner_id]
            ).fetchall()
            assert sql_name == runner_channel(schema, runner_id)
            assert len(sql_name.encode()) <= 63
            conn.execute("SELECT pg_notify(%s, '')", [sql_name])  # a name pg_notify accepts
    if len(f"{schema}.runner.".encode()) + 36 > 63:
        assert sql_name.startswith("rtx.runner.")
    else:
        assert sql_name == f"{schema}.runner.{runner_id}"


def _listen(db_url: str, channel: str) -> psycopg.Connection:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(f'LISTEN "{channel}"')
    return conn


def _heard(conn: psycopg.Connection, wait: float = 0.5) -> list[str]:
    return [n.channel for n in conn.notifies(timeout=wait)]


def test_an_assignment_wakes_only_the_runner_it_is_for(db, db_url):
    schema = db.settings.schema
    a, b = register_runner(db, name="a"), register_runner(db, name="b")
    hear_a, hear_b = _listen(db_url, runner_channel(schema, a)), _listen(db_url, runner_channel(schema, b))
    hear_allocator = _listen(db_url, allocator_channel(schema))
    try:
        ids = insert_allocations(db, 3)
        assert _heard(hear_allocator) == [allocator_channel(schema)]  # new work: the allocators
        with db.transaction() as gw:
            assert assign_to(gw, ids, a) == 3
        assert _heard(hear_a) == [runner_channel(schema, a)]  # once per transaction, not per row
        assert _heard(hear_b, 0.2) == []
        with db.transaction() as gw:  # a drain is a state change of runner b: b alone hears it
            assert gw.set_runner_state(b, "draining", ["active"])
        assert _heard(hear_b) == [runner_channel(schema, b)]
        assert _heard(hear_a, 0.2) == []
    finally:
        for conn in (hear_a, hear_b, hear_allocator):
            conn.close()


def _assign_without_notify(db_url: str, ids: list[str], runner_id: str) -> None:
    """An assignment whose NOTIFY is lost: triggers off for this session (session_replication_role)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        cur = conn.execute(
            "UPDATE runtime_executor.allocations SET state = 'assigned', runner_id = %s,"
            " assigned_at = clock_timestamp() WHERE id = ANY(%s::uuid[]) AND state = 'unassigned'",
            [runner_id, ids],
        )
        assert cur.rowcount == len(ids)


def test_an_idle_runner_starts_work_whose_notify_was_lost_at_its_next_renewal(db, daemons, tmp_path):
    """An idle runner sends only renewals (its work poll is 5 lease periods apart); the renewal
    reports work assigned to it, so a lost NOTIFY costs at most one idle renewal interval
    (lease / 2), not the poll's."""
    record = tmp_path / "record.txt"
    daemons.runner(name="r1", **IDLE)
    [runner_id] = wait_runners(daemons.db_url, 1)
    time.sleep(LEASE)  # settled: idle, between renewals
    [task] = insert_allocations(db, 1, workload={"record": str(record)})  # no allocator: assigned by hand
    assigned = time.monotonic()
    _assign_without_notify(daemons.db_url, [task], runner_id)
    wait_for(lambda: read_records(record), 3 * LEASE, what="the task to start")
    took = time.monotonic() - assigned
    assert took < LEASE / 2 + 1.0, (
        f"started {took:.1f} s after a lost NOTIFY (idle renewals every {LEASE / 2} s)"
    )
    assert wait_states(daemons.db_url, [task], DONE) == {task: "succeeded"}


def test_an_idle_runner_fails_an_orphan_soon_after_a_renewal_sees_it(db, daemons):
    """A row running on an idle runner for longer than a lease with no process there (a start whose
    reply was lost): the renewal sees it and the runner fails it within about a renewal interval,
    not the idle poll's five lease periods."""
    daemons.runner(name="r1", RTX_START_RETRIES="0", **IDLE)
    [runner_id] = wait_runners(daemons.db_url, 1)
    [orphan] = insert_allocations(db, 1)
    time.sleep(LEASE)  # past the first orphan check of the runner's start
    with db.transaction() as gw:
        gw.conn.execute(
            "UPDATE runtime_executor.allocations SET state = 'running', runner_id = %s,"
            " started_at = clock_timestamp() - interval '1 minute' WHERE id = %s",
            [runner_id, orphan],
        )
    placed = time.monotonic()
    assert wait_states(daemons.db_url, [orphan], DONE, timeout=3 * LEASE) == {orphan: "failed"}
    took = time.monotonic() - placed
    assert took < LEASE / 2 + 1.5, f"orphan failed after {took:.1f} s"
    [(reason,)] = query(
        daemons.db_url, "SELECT reason FROM runtime_executor.allocations WHERE id = %(a)s", {"a": orphan}
    )
    assert "the runner had no process for it" in reason


def test_a_finish_wakes_the_allocators_only_while_work_waits(db, db_url):
    """Each NOTIFY-ing commit signals every listening backend (every runner's heartbeat session), so
    a finish notifies the allocators only when a pending row could use the capacity it freed."""
    schema = db.settings.schema
    runner = register_runner(db)
    first, second = insert_allocations(db, 2)
    for allocation in (first, second):
        start_on_runner(db, allocation, runner)
    hear_allocator = _listen(db_url, allocator_channel(schema))
    try:
        with db.transaction() as gw:  # nothing waits: no wake-up
            assert gw.finish_allocation(first, runner, "succeeded", 0, None)
        assert _heard(hear_allocator, 0.3) == []
        insert_allocations(db, 1)
        assert _heard(hear_allocator) == [allocator_channel(schema)]  # the insert's own
        with db.transaction() as gw:  # now a row waits: the freed capacity wakes the allocators
            assert gw.finish_allocation(second, runner, "failed", 1, "boom")
        assert _heard(hear_allocator) == [allocator_channel(schema)]
    finally:
        hear_allocator.close()
