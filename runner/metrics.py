"""The runner's Prometheus metrics (``rtx-runner serve --metrics-port``; docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime_executor.metrics import LATENCY_BUCKETS, MB, DaemonMetrics


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
        self.capacity_memory = gauge(
            "rtx_runner_capacity_memory_bytes", "Memory the runner offers (--memory)."
        )
        self.reserved_slots = gauge(
            "rtx_runner_reserved_slots", "Slots reserved by the tasks the runner runs."
        )
        self.reserved_cpu = gauge(
            "rtx_runner_reserved_cpu_cores", "Cores reserved by the tasks the runner runs."
        )
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
            "Tasks whose memory passed their reservation: warned (once per task), stopped (--enforce-memory), "
            "oom_killed (by the kernel, at their cgroup's limit: --isolation cgroup).",
            ["runner", "action"],
            registry=r,
        )
        for action in ("warned", "stopped", "oom_killed"):
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
