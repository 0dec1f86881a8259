"""The allocator's Prometheus metrics (``rtx-allocator serve --metrics-port``; docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from runtime_executor.metrics import LATENCY_BUCKETS, LIVE_STATES, DaemonMetrics

PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RESCUE_OUTCOMES = {"runner": "runner_lost", "returned": "allocation_returned", "lost": "allocation_lost"}


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
        self.desired_runners = Gauge(
            "rtx_desired_runners",
            "Runners of the queue's runner size that its waiting and reserved work needs (runtime_executor.autoscale; "
            "the autoscaling signal, see docs/scaling.md).",
            ["queue"],
            registry=r,
        )
        self.too_large = Gauge(
            "rtx_autoscale_too_large_allocations",
            "Live allocations of the queue that fit no runner of its runner size (they need a bigger runner, "
            "not more; not counted in rtx_desired_runners).",
            ["queue"],
            registry=r,
        )
        self._seen_queues: set[str] = set()
        self._scaled_queues: set[str] = set()

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

    def set_autoscale(self, scales: Mapping[str, Any]) -> None:
        """``runtime_executor.autoscale.from_rows`` per queue; a queue seen before and now absent drops to 0."""
        for queue in self._scaled_queues - scales.keys():
            self.desired_runners.labels(queue).set(0)
            self.too_large.labels(queue).set(0)
        for queue, scale in scales.items():
            self.desired_runners.labels(queue).set(scale.desired)
            self.too_large.labels(queue).set(scale.too_large)
        self._scaled_queues |= scales.keys()
