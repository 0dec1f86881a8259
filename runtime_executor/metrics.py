"""Metrics: Prometheus for the daemons, Airflow's own metrics (``Stats``) for the executor shim.

Every metric is documented in ``docs/metrics.md``; keep the two in step.

* ``AllocatorMetrics`` / ``RunnerMetrics``: one ``prometheus_client`` registry per daemon process,
  served on ``--metrics-port`` (``metrics_port``, 0 = off) at ``--metrics-host`` (default
  127.0.0.1) by ``serve``. The metrics exist whether or not they are served; recording one is a
  lock and an addition, so the hot paths never check whether metrics are on.
* ``ExecutorStats``: what the shim emits through ``airflow.observability.stats`` (the copy that
  ``BaseExecutor.__init__`` initialises in the scheduler, so it goes wherever the scheduler's own
  metrics go: StatsD, Datadog or OpenTelemetry). Airflow is imported lazily: this module is shared
  with the daemons, which never import Airflow.

Nothing in here may break the caller: the shim's part swallows and logs every error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MB = 2**20

# Seconds from an insert to its placement / to its task process: from a few ms (idle cluster) to
# the hours a request may wait for capacity.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

LIVE_STATES = ("unassigned", "assigned", "running")
RESCUE_OUTCOMES = {"runner": "runner_lost", "returned": "allocation_returned", "lost": "allocation_lost"}


class DaemonMetrics:
    """A daemon's own registry (with the process, platform and GC collectors) and its HTTP server."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            GCCollector,
            PlatformCollector,
            ProcessCollector,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series: the daemon owns its process
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread (raises OSError if the port is taken)."""
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self) -> str:
        """The exposition text (what a scrape gets)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


class AllocatorMetrics(DaemonMetrics):
    def __init__(self) -> None:
        super().__init__()
        from prometheus_client import Counter, Gauge, Histogram

        r = self.registry
        self.allocations = Gauge(
            "rtx_allocations",
            "Live allocations by queue and state (unassigned = queue depth).",
            ["queue", "state"],
            registry=r,
        )
        self.unschedulable = Gauge(
            "rtx_unschedulable_allocations",
            "Unassigned allocations that no live runner of their queue could ever hold.",
            ["queue"],
            registry=r,
        )
        self.placement_latency = Histogram(
            "rtx_placement_latency_seconds",
            "Seconds from an allocation's insert to its assignment to a runner.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.placement_pass = Histogram(
            "rtx_placement_pass_duration_seconds",
            "Seconds one placement pass (one transaction) took, for passes that found pending work.",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.rescues = Counter(
            "rtx_rescues",
            "Rescues after an expired runner lease: runner_lost, allocation_returned (assigned, not "
            "started: back to the pool), allocation_lost (running: reported failed).",
            ["outcome"],
            registry=r,
        )
        for outcome in RESCUE_OUTCOMES.values():
            self.rescues.labels(outcome)
        self.unschedulable_failed = Counter(
            "rtx_unschedulable_failed",
            "Allocations failed because they stayed unschedulable past unschedulable_timeout.",
            registry=r,
        )
        self._seen: set[tuple[str, str]] = set()
        self._seen_queues: set[str] = set()

    def observe_placed(self, waits: Iterable[tuple[str, float]]) -> None:
        """(queue, seconds from request to placement) of each allocation placed."""
        children: dict[str, Any] = {}
        for queue, seconds in waits:
            child = children.get(queue)
            if child is None:
                child = children[queue] = self.placement_latency.labels(queue)
            child.observe(seconds if seconds > 0.0 else 0.0)

    def observe_rescue(self, outcome: str) -> None:
        self.rescues.labels(RESCUE_OUTCOMES.get(outcome, outcome)).inc()

    def set_allocations(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rows of ``metrics_allocations``; a queue/state seen before and now absent drops to 0."""
        counts: dict[tuple[str, str], int] = {}
        unschedulable: dict[str, int] = {}
        for row in rows:
            key = (row["queue"], row["state"])
            counts[key] = counts.get(key, 0) + int(row["count"])
            unschedulable[row["queue"]] = unschedulable.get(row["queue"], 0) + int(row["unschedulable"])
        for queue in {q for q, _ in counts}:
            for state in LIVE_STATES:
                counts.setdefault((queue, state), 0)
        for key in self._seen - counts.keys():
            counts[key] = 0
        for queue in self._seen_queues - unschedulable.keys():
            unschedulable[queue] = 0
        for (queue, state), n in counts.items():
            self.allocations.labels(queue, state).set(n)
        for queue, n in unschedulable.items():
            self.unschedulable.labels(queue).set(n)
        self._seen |= counts.keys()
        self._seen_queues |= unschedulable.keys()


class RunnerMetrics(DaemonMetrics):
    def __init__(self, runner: str) -> None:
        super().__init__()
        from prometheus_client import Counter, Gauge, Histogram

        r = self.registry
        self.runner = runner

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, ["runner"], registry=r).labels(runner)

        self.capacity_slots = gauge("rtx_runner_capacity_slots", "Slots the runner offers (--slots).")
        self.capacity_cpu = gauge("rtx_runner_capacity_cpu_cores", "Cores the runner offers (--cpu).")
        self.capacity_memory = gauge("rtx_runner_capacity_memory_bytes", "Memory the runner offers (--memory).")
        self.reserved_slots = gauge("rtx_runner_reserved_slots", "Slots reserved by the tasks the runner runs.")
        self.reserved_cpu = gauge("rtx_runner_reserved_cpu_cores", "Cores reserved by the tasks the runner runs.")
        self.reserved_memory = gauge(
            "rtx_runner_reserved_memory_bytes", "Memory reserved by the tasks the runner runs."
        )
        self.used_cpu = gauge(
            "rtx_runner_used_cpu_cores", "Cores the runner's tasks used over the last usage sample."
        )
        self.used_memory = gauge(
            "rtx_runner_used_memory_bytes", "Memory the runner's tasks held at the last usage sample."
        )
        self.running_tasks = gauge("rtx_runner_running_tasks", "Task processes the runner runs.")
        self.completions = Counter(
            "rtx_task_completions",
            "Task outcomes the runner recorded: succeeded, failed, cancelled (revoked while running), "
            "lost (the row had been rescued meanwhile; the outcome was not recorded).",
            ["runner", "outcome"],
            registry=r,
        )
        for outcome in ("succeeded", "failed"):
            self.completions.labels(runner, outcome)
        self.pickup_latency = Histogram(
            "rtx_pickup_latency_seconds",
            "Seconds from an allocation's insert to the start of its task process on this runner.",
            ["queue"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.memory_exceeded = Counter(
            "rtx_task_memory_exceeded",
            "Tasks whose memory passed their reservation: warned (once per task), stopped (--enforce-memory).",
            ["runner", "action"],
            registry=r,
        )
        for action in ("warned", "stopped"):
            self.memory_exceeded.labels(runner, action)

    def set_capacity(self, slots: int, cpu: float, memory_mb: int) -> None:
        self.capacity_slots.set(slots)
        self.capacity_cpu.set(cpu)
        self.capacity_memory.set(memory_mb * MB)

    def track_reserved(self, reserved: Callable[[], tuple[int, float, int, int]]) -> None:
        """``reserved()`` -> (slots, cpu, memory_mb, tasks) of the running tasks, read at every scrape."""
        self.reserved_slots.set_function(lambda: reserved()[0])
        self.reserved_cpu.set_function(lambda: reserved()[1])
        self.reserved_memory.set_function(lambda: reserved()[2] * MB)
        self.running_tasks.set_function(lambda: reserved()[3])

    def set_used(self, cpu_percent: float, memory_mb: float) -> None:
        self.used_cpu.set(cpu_percent / 100.0)
        self.used_memory.set(memory_mb * MB)

    def observe_completion(self, outcome: str) -> None:
        self.completions.labels(self.runner, outcome).inc()


def serve_metrics(metrics: DaemonMetrics, host: str, port: int) -> None:
    """Start the daemon's ``/metrics`` server when a port is configured."""
    if port:
        metrics.serve(host, port)


class ExecutorStats:
    """The shim's metrics through Airflow's ``Stats`` (initialised by ``BaseExecutor.__init__``).

    * counters ``rtx.completions.<succeeded|failed|lost>`` as ``sync()`` reports outcomes;
    * gauges ``rtx.open_slots``, ``rtx.open_cpu``, ``rtx.open_memory_mb``, ``rtx.active_runners``,
      ``rtx.allocations.<unassigned|assigned|running>`` and ``rtx.unschedulable``, from one query
      at most every ``refresh`` seconds.
    """

    def __init__(self, logger: logging.Logger | Any, refresh: float = 10.0) -> None:
        self.log = logger
        self.refresh = refresh
        self._last_refresh: float | None = None

    def completions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        try:
            from runtime_executor.airflow_compat import airflow_stats

            Stats = airflow_stats()

            for row in rows:
                if row["state"] in ("succeeded", "failed", "lost"):
                    Stats.incr(f"rtx.completions.{row['state']}")
        except Exception:  # noqa: BLE001 - metrics never break sync()
            self.log.debug("rtx: could not emit completion metrics", exc_info=True)

    def due(self) -> bool:
        now = time.monotonic()
        if self._last_refresh is not None and now - self._last_refresh < self.refresh:
            return False
        self._last_refresh = now
        return True

    def gauges(self, row: Mapping[str, Any]) -> None:
        try:
            from runtime_executor.airflow_compat import airflow_stats

            Stats = airflow_stats()

            Stats.gauge("rtx.active_runners", int(row["runners"]))
            Stats.gauge("rtx.open_slots", int(row["open_slots"]))
            Stats.gauge("rtx.open_cpu", float(row["open_cpu"]))
            Stats.gauge("rtx.open_memory_mb", int(row["open_memory_mb"]))
            for state in LIVE_STATES:
                Stats.gauge(f"rtx.allocations.{state}", int(row[state]))
            Stats.gauge("rtx.unschedulable", int(row["unschedulable"]))
        except Exception:  # noqa: BLE001 - metrics never break sync()
            self.log.debug("rtx: could not emit gauges", exc_info=True)
