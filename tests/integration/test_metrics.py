"""Metrics: the daemons' Prometheus endpoints (real processes, scraped over HTTP) and the executor
shim's metrics through Airflow's ``Stats``. Every metric is documented in docs/metrics.md."""

from __future__ import annotations

import signal
import socket
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testing.daemons import wait_for
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}
MB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scrape(dict):
    """{(sample name, frozenset(labels)): value} of one scrape of /metrics."""

    def get_value(self, name: str, **labels: str) -> float:
        return self.get((name, frozenset(labels.items())), 0.0)


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def answers(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def wait_metric(port: int, predicate, what: str, timeout: float = 20) -> Scrape:
    return wait_for(lambda: (s := scrape(port)) and predicate(s) and s, timeout, interval=0.1, what=what)


def test_daemons_serve_prometheus_metrics(db, daemons):
    env = {**FAST, "RTX_ALLOCATOR_POLL_INTERVAL": "0.5", "RTX_USAGE_INTERVAL": "0.5"}
    a_port, r1_port, r2_port = free_port(), free_port(), free_port()
    daemons.allocator("--metrics-port", str(a_port), **env)
    daemons.runner(
        "--slots", "2", "--cpu", "2", "--memory", "1000", "--metrics-port", str(r1_port), name="r1", **env
    )
    wait_runners(daemons.db_url, 1)
    wait_for(lambda: answers(a_port) and answers(r1_port), 20, what="metrics endpoints")

    # capacity from the flags; nothing happened yet
    r1 = scrape(r1_port)
    assert r1.get_value("rtx_runner_capacity_slots", runner="r1") == 2
    assert r1.get_value("rtx_runner_capacity_cpu_cores", runner="r1") == 2
    assert r1.get_value("rtx_runner_capacity_memory_bytes", runner="r1") == 1000 * MB
    assert r1.get_value("rtx_task_completions_total", runner="r1", outcome="succeeded") == 0
    assert r1.get_value("rtx_pickup_latency_seconds_count", queue="default") == 0
    alloc = scrape(a_port)
    assert alloc.get_value("rtx_placement_latency_seconds_count", queue="default") == 0
    assert alloc.get_value("rtx_rescues_total", outcome="runner_lost") == 0
    assert "process_cpu_seconds_total" in {name for name, _ in alloc}  # the process collector is there

    # work flows: completions, pickup and placement latency move
    ok = insert_allocations(db, 3, workload={})
    [bad] = insert_allocations(db, 1, workload={"exit": 3})
    wait_states(daemons.db_url, [*ok, bad], DONE)
    r1 = wait_metric(
        r1_port,
        lambda s: (
            s.get_value("rtx_task_completions_total", runner="r1", outcome="succeeded") == 3
            and s.get_value("rtx_task_completions_total", runner="r1", outcome="failed") == 1
        ),
        "completions on r1",
    )
    assert r1.get_value("rtx_pickup_latency_seconds_count", queue="default") == 4
    assert 0 < r1.get_value("rtx_pickup_latency_seconds_sum", queue="default") < 4 * 20
    alloc = scrape(a_port)
    assert alloc.get_value("rtx_placement_latency_seconds_count", queue="default") == 4
    assert alloc.get_value("rtx_placement_pass_duration_seconds_count") >= 1

    # reserved and used while a task runs
    [busy] = insert_allocations(db, 1, workload={"allocate_mb": 100, "hold": 30}, cpu=0.5, memory_mb=300)
    wait_states(daemons.db_url, [busy], {"running"})
    r1 = wait_metric(
        r1_port,
        lambda s: s.get_value("rtx_runner_used_memory_bytes", runner="r1") > 50 * MB,
        "used memory of r1",
    )
    assert r1.get_value("rtx_runner_reserved_slots", runner="r1") == 1
    assert r1.get_value("rtx_runner_reserved_cpu_cores", runner="r1") == 0.5
    assert r1.get_value("rtx_runner_reserved_memory_bytes", runner="r1") == 300 * MB
    assert r1.get_value("rtx_runner_running_tasks", runner="r1") == 1
    with db.transaction() as gw:
        gw.cancel_allocations([busy])
    wait_states(daemons.db_url, [busy], DONE)

    # queue depth of a queue no runner serves goes up, then down once a runner for it comes
    batch = insert_allocations(db, 3, workload={"sleep": 60}, queue="batch")
    wait_metric(
        a_port,
        lambda s: s.get_value("rtx_allocations", queue="batch", state="unassigned") == 3,
        "queue depth of batch = 3",
    )
    # an unschedulable request (more memory than any runner of its queue has)
    [huge] = insert_allocations(db, 1, workload={}, memory_mb=5000)
    wait_metric(
        a_port,
        lambda s: s.get_value("rtx_unschedulable_allocations", queue="default") == 1,
        "unschedulable gauge of default = 1",
    )
    r2 = daemons.runner("--slots", "4", "--queue", "batch", "--metrics-port", str(r2_port), name="r2", **env)
    wait_states(daemons.db_url, batch, {"running"})
    alloc = wait_metric(
        a_port,
        lambda s: (
            s.get_value("rtx_allocations", queue="batch", state="unassigned") == 0
            and s.get_value("rtx_allocations", queue="batch", state="running") == 3
        ),
        "queue depth of batch back to 0",
    )
    assert alloc.get_value("rtx_placement_latency_seconds_count", queue="batch") == 3
    assert alloc.get_value("rtx_unschedulable_allocations", queue="default") == 1  # still nowhere to go
    with db.transaction() as gw:
        gw.cancel_allocations([huge])
    wait_metric(
        a_port,
        lambda s: s.get_value("rtx_unschedulable_allocations", queue="default") == 0,
        "unschedulable 0",
    )

    # kill -9 the batch runner: the allocator counts the rescue
    r2.kill()
    assert r2.proc.returncode == -signal.SIGKILL
    wait_states(daemons.db_url, batch, {"lost"}, timeout=30)
    alloc = wait_metric(
        a_port,
        lambda s: (
            s.get_value("rtx_rescues_total", outcome="runner_lost") == 1
            and s.get_value("rtx_rescues_total", outcome="allocation_lost") == 3
        ),
        "rescue counters",
    )
    assert alloc.get_value("rtx_rescues_total", outcome="allocation_returned") == 0
    wait_metric(
        a_port,
        lambda s: s.get_value("rtx_allocations", queue="batch", state="running") == 0,
        "running gauge of batch back to 0",
    )


def test_metrics_are_off_by_default_and_a_taken_port_fails_clearly(db, daemons):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        allocator = daemons.allocator("--metrics-port", str(port), **FAST)
        assert allocator.proc.wait(30) == 1
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in allocator.log()
    assert "Traceback" not in allocator.log()


# -- the executor shim, through Airflow's Stats -----------------------------------------------------


class RecordingStats:
    """A Stats backend that records every call (``stats.initialize(factory=lambda: recorder)``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.fail = False

    def _record(self, kind: str, stat: str, value: object) -> None:
        if self.fail:
            raise RuntimeError("metrics backend down")
        self.calls.append((kind, stat, value))

    def incr(self, stat, count=1, rate=1, *, tags=None):
        self._record("incr", stat, count)

    def decr(self, stat, count=1, rate=1, *, tags=None):
        self._record("decr", stat, count)

    def gauge(self, stat, value, rate=1, delta=False, *, tags=None):
        self._record("gauge", stat, value)

    def timing(self, stat, dt, *, tags=None):
        self._record("timing", stat, dt)

    def timer(self, *args, **kwargs):  # pragma: no cover - not used by rtx
        raise NotImplementedError

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for kind, stat, value in self.calls:
            if kind == "incr" and stat.startswith("rtx."):
                out[stat] += value
        return out

    def gauges(self) -> dict[str, object]:
        return {
            stat: value for kind, stat, value in self.calls if kind == "gauge" and stat.startswith("rtx.")
        }


@pytest.fixture
def recorder(monkeypatch):
    """Airflow's scheduler-side Stats, recording (restored afterwards)."""
    from airflow._shared.observability.metrics import stats

    for name in ("_factory", "_backend", "_export_legacy_names"):
        monkeypatch.setattr(stats, name, getattr(stats, name))
    recording = RecordingStats()

    def install() -> RecordingStats:
        # after RuntimeExecutor() (BaseExecutor.__init__ initialises Stats from [metrics])
        stats.initialize(factory=lambda: recording, export_legacy_names=False)
        return recording

    return install


def test_executor_emits_completions_and_capacity_through_airflow_stats(rtx_db, make_executor, recorder):
    from tests.integration.conftest import finish_on_runner, register_runner, start_on_runner

    executor = make_executor(job_id=None)
    stats = recorder()
    runner_id = register_runner(rtx_db)  # 16 slots, 8 cpu, 16384 MB
    done = insert_allocations(rtx_db, 3, workload={})
    running = insert_allocations(rtx_db, 1, workload={}, slots=4, cpu=2.0, memory_mb=4096)
    waiting = insert_allocations(rtx_db, 2, workload={})
    for allocation_id in [*done, *running]:
        start_on_runner(rtx_db, allocation_id, runner_id)
    finish_on_runner(rtx_db, done[0], runner_id, "succeeded")
    finish_on_runner(rtx_db, done[1], runner_id, "succeeded")
    finish_on_runner(rtx_db, done[2], runner_id, "failed", 1, "boom")

    executor.sync()
    assert stats.counters() == {"rtx.completions.succeeded": 2, "rtx.completions.failed": 1}
    assert stats.gauges() == {
        "rtx.active_runners": 1,
        "rtx.open_slots": 12,
        "rtx.open_cpu": 6.0,
        "rtx.open_memory_mb": 16384 - 4096,
        "rtx.allocations.unassigned": len(waiting),
        "rtx.allocations.assigned": 0,
        "rtx.allocations.running": 1,
        "rtx.unschedulable": 0,
    }

    # gauges are read at most every ~10 s; completions are counted as they are reported, once
    stats.calls.clear()
    finish_on_runner(rtx_db, running[0], runner_id, "succeeded")
    executor.sync()
    executor.sync()
    assert stats.counters() == {"rtx.completions.succeeded": 1}
    assert stats.gauges() == {}

    # a broken metrics backend never breaks sync(): outcomes are still reported
    stats.fail = True
    executor._stats.refresh = 0.0
    executor.get_event_buffer()  # what the scheduler already took
    [last] = insert_allocations(rtx_db, 1, workload={}, dag_id="last_dag")
    start_on_runner(rtx_db, last, runner_id)
    finish_on_runner(rtx_db, last, runner_id, "succeeded")
    executor.sync()
    assert [(key.dag_id, state) for key, (state, _info) in executor.get_event_buffer().items()] == [
        ("last_dag", "success")
    ]
