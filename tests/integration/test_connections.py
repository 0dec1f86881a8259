"""The connection budget of docs/scaling.md, counted by the server: real daemons, a real shim, and
``pg_stat_activity`` by ``application_name`` (at most 2 connections per runner, even after it ran a
task and recorded its usage)."""

from __future__ import annotations

import re
from collections import Counter

from testing.daemons import Daemons, query, wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST

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
    # a poll far slower than the test: work reaches the runners by NOTIFY, on their heartbeat connection
    env = {**FAST, "RTX_SCHEMA": rtx.schema, "RTX_USAGE_INTERVAL": "0.2", "RTX_RUNNER_POLL_INTERVAL": "60"}
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
