"""The shim's metrics through Airflow's own ``Stats`` (the copy that ``BaseExecutor.__init__``
initialises in the scheduler, so they go wherever the scheduler's own metrics go: StatsD, Datadog
or OpenTelemetry). Every metric is documented in ``docs/metrics.md``.

Nothing in here may break the caller: every error is swallowed and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from runtime_executor.metrics import LIVE_STATES


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
