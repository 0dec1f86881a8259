"""The autoscaling signal with real daemons and mixed requests: the allocator's ``rtx_desired_runners``
gauge and ``rtx status --json`` against the documented formula (docs/scaling.md#autoscaling)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

from testing.daemons import REPO, daemon_env, query, wait_for
from tests.integration.test_metrics import answers, free_port, scrape
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, states, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}

SIZE = {"slots": 4, "cpu": 2.0, "memory_mb": 1000}
RUNNER_ARGS = ("--slots", "4", "--cpu", "2", "--memory", "1000")


def status_json(db_url: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime_executor", "status", "--json"],
        env=daemon_env(db_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def expected(requests: list[tuple[int, float, int, int]]) -> tuple[int, int]:
    """(desired, too large) by the formula, from (count, slots, cpu, memory_mb) groups, worked out here."""
    fits = [
        (n, s, c, m)
        for n, s, c, m in requests
        if s <= SIZE["slots"] and c <= SIZE["cpu"] and m <= SIZE["memory_mb"]
    ]
    bounds = []
    for i, d in enumerate(("slots", "cpu", "memory_mb")):
        total = sum(n * r[i] for n, *r in fits)
        halves = sum(n for n, *r in fits if r[i] > SIZE[d] / 2)
        bounds.append(max(math.ceil(total / SIZE[d]), halves))
    return max(bounds), sum(n for n, *_ in requests) - sum(n for n, *_ in fits)


def test_desired_runners_gauge_and_status_follow_the_formula(db, daemons):
    port = free_port()
    env = {
        **FAST,
        "RTX_ALLOCATOR_POLL_INTERVAL": "0.3",
        "RTX_DRAIN_TIMEOUT": "1",
    }  # teardown stops the sleepers
    daemons.allocator("--metrics-port", str(port), **env)
    for name in ("r1", "r2"):
        daemons.runner(*RUNNER_ARGS, name=name, **env)
    wait_runners(db.settings.database_url, 2)
    wait_for(lambda: answers(port), 20, what="the allocator's metrics endpoint")
    assert scrape(port).get_value("rtx_desired_runners", queue="default") == 0  # idle: none wanted

    hold = {"sleep": 60}
    mixed = [  # (count, slots, cpu, memory_mb): some run, some wait, some fit no runner of this size
        (3, 1, 1.0, 0),
        (4, 1, 0.0, 400),
        (2, 3, 0.0, 0),  # over half a runner's slots: never two on one runner
        (5, 1, 0.25, 100),
        (1, 1, 4.0, 0),  # too large: 4 cores on a 2-core runner
        (1, 6, 0.0, 0),  # too large: 6 slots
    ]
    for n, slots, cpu, memory_mb in mixed:
        insert_allocations(db, n, workload=hold, slots=slots, cpu=cpu, memory_mb=memory_mb)
    desired, too_large = expected(mixed)
    # worked out: slots 18 / 4 -> 5, cpu 4.25 / 2 -> 3, memory 2100 / 1000 -> 3, two requests over half
    # a runner's slots -> 2; the two too large count apart
    assert (desired, too_large) == (5, 2)

    # some of it is placed and running meanwhile: the figure counts waiting and reserved alike
    wait_for(
        lambda: (
            query(
                db.settings.database_url,
                "SELECT count(*) FROM runtime_executor.allocations WHERE state = 'running'",
            )[0][0]
            >= 2
        ),
        30,
        what="tasks running",
    )
    # every insert above is committed: the next metrics pass must show the figure (both gauges at once)
    wait_for(
        lambda: (
            (m := scrape(port))
            and m.get_value("rtx_desired_runners", queue="default") == desired
            and m.get_value("rtx_autoscale_too_large_allocations", queue="default") == too_large
        ),
        20,
        interval=0.2,
        what=f"rtx_desired_runners == {desired} and too large == {too_large}",
    )

    scale = status_json(db.settings.database_url)["autoscale"]["default"]
    assert scale["desired_runners"] == desired
    assert scale["too_large"] == too_large
    assert scale["too_large_needs"] == {"slots": 6, "cpu": 4.0, "memory_mb": 0}
    assert scale["runner_size"] == SIZE
    assert scale["runners"] == 2
    assert scale["requests"] == 14
    assert scale["demand"] == {"slots": 18, "cpu": 4.25, "memory_mb": 2100}
    running = query(
        db.settings.database_url,
        "SELECT count(*) FROM runtime_executor.allocations WHERE state <> 'unassigned'",
    )[0][0]
    assert scale["waiting"] == 14 - running

    # scale-down: a draining runner's work finishes where it is and asks for no new runner
    drain = subprocess.run(
        [sys.executable, "-m", "runtime_executor", "runner", "drain", "r2"],
        env=daemon_env(db.settings.database_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert drain.returncode == 0, drain.stderr

    def after_drain():
        rows = query(
            db.settings.database_url,
            """SELECT a.slots, a.cpu, a.memory_mb FROM runtime_executor.allocations a
                 LEFT JOIN runtime_executor.runners r ON r.id = a.runner_id
                WHERE a.state = 'unassigned' OR (a.state IN ('assigned', 'running') AND r.state = 'active')""",
        )
        snap = status_json(db.settings.database_url)["autoscale"]["default"]
        want, big = expected([(1, s, c, m) for s, c, m in rows])
        on_r2 = query(
            db.settings.database_url,
            """SELECT count(*) FROM runtime_executor.allocations a JOIN runtime_executor.runners r ON r.id = a.runner_id
                WHERE r.name = 'r2' AND a.state = 'running'""",
        )[0][0]
        return (
            snap["runners"] == 1
            and snap["desired_runners"] == want
            and snap["too_large"] == big
            and (snap, on_r2, want)
        )

    snap, on_r2, want = wait_for(
        after_drain, 30, interval=0.3, what="the figure without the draining runner's work"
    )
    assert on_r2 > 0 and snap["requests"] == 14 - on_r2  # r2's running tasks left the demand


def test_scale_down_drains_the_runner_and_never_kills_a_running_task(db, daemons, tmp_path):
    """What an autoscaler's scale-down does (deploy/kubernetes: a preStop `rtx runner drain`, then
    SIGTERM): the runner takes nothing new, its running tasks finish untouched, then it exits."""
    url, record = db.settings.database_url, tmp_path / "record.txt"
    env = {**FAST, "RTX_DRAIN_TIMEOUT": "60"}
    daemons.allocator(**env)
    old = daemons.runner(
        "--slots", "4", name="old", **env
    )  # room left for more: only the drain keeps it away
    wait_runners(url, 1)
    # a SIGTERM reaching these tasks would be recorded ("term") and hold them for a minute
    running = insert_allocations(db, 2, workload={"sleep": 4, "term_grace": 60, "record": str(record)})
    wait_states(url, running, {"running"})

    drain = subprocess.run(
        [sys.executable, "-m", "runtime_executor", "runner", "drain", "old"],
        env=daemon_env(url), cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert drain.returncode == 0, drain.stderr
    later = insert_allocations(db, 2, workload={"record": str(record)})
    daemons.runner("--slots", "2", name="new", **env)
    assert set(wait_states(url, later, DONE).values()) == {"succeeded"}
    old.send(signal.SIGTERM)
    assert old.proc.wait(60) == 0

    assert set(states(url, running).values()) == {"succeeded"}
    ids = dict(query(url, "SELECT name, id::text FROM runtime_executor.runners"))
    records = read_records(record)
    for allocation in running:
        assert [(r[0], r[2]) for r in records if r[1] == allocation] == [
            ("start", ids["old"]),
            ("end", ids["old"]),
        ]
    assert {r[2] for r in records if r[1] in later} == {ids["new"]}  # nothing new on the drained runner
    assert query(url, "SELECT state FROM runtime_executor.runners WHERE name = 'old'") == [("stopped",)]
