"""The demo's table of where each task ran: rtx's allocation rows through the gateway's
``run_placements`` query, in the schema the demo's settings name (never a fixed one)."""

from __future__ import annotations

import psycopg

from demo.config import DAG_ID
from demo.example import placements
from runtime_executor.db.connection import Database
from runtime_executor.db.migrate import migrate
from runtime_executor.settings import Settings
from tests.integration.conftest import register_runner
from tests.support.allocations import assign_to, insert_allocations

SCHEMA = "rtx_demo_elsewhere"


def test_placements_read_the_schema_of_the_settings(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        migrate(conn, SCHEMA)
    db = Database(Settings(database_url=db_url, schema=SCHEMA), "rtx-test")
    try:
        runner_id = register_runner(db, name="demo-large")
        placed = insert_allocations(db, 2, dag_id=DAG_ID, slots=2, cpu=1.5, memory_mb=1024)
        insert_allocations(db, 1, dag_id="another_dag")  # another DAG's rows are not in the table
        with db.transaction() as gw:
            assert assign_to(gw, placed[:1], runner_id) == 1
    finally:
        db.close()

    env = {"RTX_DATABASE_URL": db_url, "RTX_SCHEMA": SCHEMA}
    assert placements(env, "manual__1") == {
        ("task_0", -1): ("demo-large", 2, 1.5, 1024),
        ("task_1", -1): (None, 2, 1.5, 1024),  # not placed yet: no runner
    }
    assert placements(env, "manual__2") == {}
    # the default schema has no rtx tables in this database: nothing to show, and no error
    assert placements({"RTX_DATABASE_URL": db_url}, "manual__1") == {}
