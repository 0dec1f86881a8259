"""What the daemons' metrics share: a Prometheus registry per process and its ``/metrics`` server.

Every metric is documented in ``docs/metrics.md``; keep the two in step. The metrics themselves
live with their owner: ``allocator.metrics.AllocatorMetrics``, ``runner.metrics.RunnerMetrics``
(served on ``--metrics-port`` (``metrics_port``, 0 = off) at ``--metrics-host``, default
127.0.0.1), and the shim's ``runtime_executor.executor_stats.ExecutorStats`` (through Airflow's
``Stats``). The metrics exist whether or not they are served; recording one is a lock and an
addition, so the hot paths never check whether metrics are on.
"""

from __future__ import annotations

from typing import Any

MB = 2**20

# Seconds from an insert to its placement / to its task process: from a few ms (idle cluster) to
# the hours a request may wait for capacity.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

LIVE_STATES = ("unassigned", "assigned", "running")  # the allocation states a gauge counts


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


def serve_metrics(metrics: DaemonMetrics, host: str, port: int) -> None:
    """Start the daemon's ``/metrics`` server when a port is configured."""
    if port:
        metrics.serve(host, port)
