"""The autoscaling signal with real daemons and mixed requests: the allocator's ``rtx_desired_runners``
gauge and ``rtx status --json`` against the documented formula (docs/scaling.md#autoscaling)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import uuid

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


# -- the KEDA example (deploy/kubernetes/keda-scaledobject.yaml) -------------------------------------

KEDA = REPO / "deploy" / "kubernetes" / "keda-scaledobject.yaml"


def _keda_documents() -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(KEDA.read_text()) if d]


def _postgresql_trigger() -> dict:
    """The commented-out PostgreSQL trigger, uncommented."""
    import yaml

    lines = KEDA.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# - type: postgresql")
    block = [line.strip()[2:] for line in lines[start:] if line.strip().startswith("#")]
    [trigger] = yaml.safe_load("\n".join(block))
    return trigger


def test_the_keda_example_scales_the_runner_deployment_on_the_gauge():
    deployment, scaled = _keda_documents()
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [prometheus] = scaled["spec"]["triggers"]
    assert prometheus["metadata"]["query"] == 'max(rtx_desired_runners{queue="default"})'
    assert prometheus["metadata"]["threshold"] == "1"
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    # scale-down drains: the pod outlives the drain, so a running task is never cut short
    assert pod["terminationGracePeriodSeconds"] >= int(env["RTX_DRAIN_TIMEOUT"]) + 40
    assert "RTX_DATABASE_URL" in env and env["RTX_DATABASE_URL"] is None  # from a Secret, not a value


def test_the_keda_postgresql_query_gives_the_gauges_figure(db):
    """The example's SQL (fixed runner size 16 slots / 4 cores / 8192 MB) against runtime_executor.autoscale,
    on a mixed workload in real rows."""
    from runtime_executor.autoscale import from_rows

    trigger = _postgresql_trigger()
    assert trigger["type"] == "postgresql"
    sql = trigger["metadata"]["query"]

    def figure() -> tuple[int, int]:
        with db.transaction() as gw:
            keda = int(gw.conn.execute(sql).fetchone()[0])
            scale = from_rows(*gw.autoscale_rows()).get("default")
        return keda, scale.desired if scale else 0

    assert figure() == (0, 0)
    with db.transaction() as gw:
        for i in range(2):
            gw.register_runner(
                id=str(uuid.uuid4()), name=f"r{i}", hostname="h", pid=1, queues=["default"], slots=16, cpu=4.0,
                memory_mb=8192, version="t", lease_timeout=30,
            )  # fmt: skip
    for n, slots, cpu, memory_mb in [(20, 1, 0.5, 256), (3, 9, 0.0, 0), (4, 1, 0.0, 5000), (2, 1, 6.0, 0)]:
        insert_allocations(db, n, slots=slots, cpu=cpu, memory_mb=memory_mb)
    insert_allocations(db, 5, queue="other", slots=4)
    keda, gauge = figure()
    # slots 51 / 16 -> 4, cpu 10 / 4 -> 3, memory 25120 / 8192 -> 4, over half: 3 (slots), 4 (memory);
    # the two 6-core requests fit no runner and count for nothing
    assert keda == gauge == 4
    insert_allocations(db, 3, slots=9)  # now six requests over half a runner's slots: slots 78 / 16 -> 5
    assert figure() == (6, 6)
    # a scheduler holding its parallelism (3, one already running): of its 40 waiting 16-slot-wide
    # requests only 2 can run, whatever the runners: 2 more over half a runner -> 8
    insert_allocations(db, 41, slots=16, scheduler_job_id=9, max_running=3)
    with db.transaction() as gw:
        (first,) = gw.conn.execute(
            "SELECT id FROM runtime_executor.allocations WHERE scheduler_job_id = 9 ORDER BY created_at, id LIMIT 1"
        ).fetchone()
        gw.conn.execute("UPDATE runtime_executor.allocations SET state = 'running' WHERE id = %s", (first,))
    assert figure() == (8, 8)
