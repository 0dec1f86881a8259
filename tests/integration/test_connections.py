"""The connection budget of docs/scaling.md, counted by the server: real daemons, a real shim, and
``pg_stat_activity`` by ``application_name`` (at most 2 connections per runner, even after it ran a
task and recorded its usage)."""

from __future__ import annotations

import re
from collections import Counter

from testing.daemons import Daemons, query, wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST

# Work reaches a runner only by NOTIFY here: a poll far slower than the test, and a lease long enough
# that a renewal never finds a start held back (a renewal that does wakes the work loop too).
NOTIFY_ONLY = {**FAST, "RTX_LEASE_TIMEOUT": "20", "RTX_RUNNER_POLL_INTERVAL": "60"}

_ALLOCATOR = re.compile(r"^rtx-allocator@[^ ]+?(-upkeep|-prune|-listen|-metrics)?$")
_RUNNER = re.compile(r"^rtx-runner:(?P<name>.+?)(-heartbeat|-control|-listen|-usage)?$")


def _by_component(url: str) -> tuple[Counter, Counter, list[str]]:
    """(connections per allocator role, per runner name, shim application names)."""
    rows = query(
        url,
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    allocator, runners, shim = Counter(), Counter(), []
    for (app,) in rows:
        if _ALLOCATOR.match(app):
            allocator[
                app.rsplit("-", 1)[-1]
                if app.endswith(("-upkeep", "-prune", "-listen", "-metrics"))
                else "placement"
            ] += 1
        elif m := _RUNNER.match(app):
            runners[m.group("name")] += 1
        elif app.startswith("rtx-executor"):
            shim.append(app)
    return allocator, runners, shim


def test_connections_per_component(rtx, rtx_db, make_executor, tmp_path):
    daemons = Daemons(rtx.url, tmp_path)
    env = {**NOTIFY_ONLY, "RTX_SCHEMA": rtx.schema, "RTX_USAGE_INTERVAL": "0.2"}
    try:
        daemons.allocator(**env)
        for name in ("r1", "r2"):
            daemons.runner("--slots", "2", name=name, **env)
        wait_for(
            lambda: (
                query(rtx.url, f"SELECT count(*) FROM \"{rtx.schema}\".runners WHERE state = 'active'")[0][0]
                == 2
            ),
            60,
            what="two runners",
        )
        executor = make_executor(job_id=7)
        executor.sync()
        # a task on each runner, long enough for the usage sampler to write (its writes share a connection)
        ids = insert_allocations(rtx_db, 2, workload={"sleep": 1.5})
        wait_for(
            lambda: len(rtx.rows("SELECT 1 FROM {schema}.allocations WHERE state = 'running'")) == 2,
            10,
            what="both tasks started by NOTIFY (the poll is 60 s)",
        )
        wait_for(
            lambda: (
                len(
                    rtx.rows(
                        "SELECT 1 FROM {schema}.allocations WHERE rss_mb IS NOT NULL AND state = 'running'"
                    )
                )
                == 2
            ),
            30,
            what="usage recorded for both tasks",
        )
        wait_for(
            lambda: (
                {
                    r["state"]
                    for r in rtx.rows(
                        "SELECT state FROM {schema}.allocations WHERE id = ANY(%s::uuid[])", (ids,)
                    )
                }
                == {"succeeded"}
            ),
            30,
            what="both tasks done",
        )
        executor.sync()
        allocator, runners, shim = _by_component(rtx.url)
        assert allocator == Counter({"placement": 1, "upkeep": 1, "prune": 1, "listen": 1})
        assert runners == Counter({"r1": 2, "r2": 2})  # work (+ usage, start-up, drain), heartbeat (+ LISTEN)
        assert shim == ["rtx-executor:7"]
        roles = sorted(
            app.removeprefix("rtx-runner:r1")
            for (app,) in query(
                rtx.url,
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE 'rtx-runner:r1%%'",
            )
        )
        assert roles == ["", "-heartbeat"]
    finally:
        daemons.stop_all()


def test_a_runner_listens_again_after_its_heartbeat_connection_is_cut(db, daemons):
    """The heartbeat's connection carries LISTEN: cut it on the server, and the runner reconnects,
    LISTENs again and still gets its work by NOTIFY (the poll is 60 s)."""
    url = db.settings.database_url
    env = NOTIFY_ONLY
    daemons.allocator(**env)
    daemons.runner("--slots", "2", name="r1", **env)
    wait_for(
        lambda: query(url, "SELECT count(*) FROM runtime_executor.runners WHERE state = 'active'")[0][0] == 1,
        60,
    )
    heartbeat = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'rtx-runner:r1-heartbeat'"
    [(old,)] = wait_for(lambda: query(url, heartbeat), 20, what="the heartbeat session")
    query(url, "SELECT pg_terminate_backend(%(pid)s)", {"pid": old})
    wait_for(
        lambda: (rows := query(url, heartbeat)) and rows[0][0] != old, 20, what="a new heartbeat session"
    )
    [allocation] = insert_allocations(db, 1, workload={})
    wait_for(
        lambda: (
            query(url, "SELECT state FROM runtime_executor.allocations WHERE id = %(a)s", {"a": allocation})
            == [("succeeded",)]
        ),
        10,
        what="the task, started by NOTIFY on the new connection",
    )
