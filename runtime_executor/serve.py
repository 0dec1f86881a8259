"""How a daemon serves: until SIGTERM or SIGINT, with systemd's notify protocol and watchdog.

``rtx-allocator serve`` and ``rtx-runner serve`` run their work with ``serve_until_signal``; its
``healthy`` check is usually ``loops_healthy`` over the daemon's ``Loop`` objects.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from runtime_executor.loop import Loop
from runtime_executor.notify import Notifier

log = structlog.get_logger("rtx.daemon")


def serve_until_signal(
    start: Callable[[], None],
    stop: Callable[[], None],
    healthy: Callable[[], bool] | None = None,
) -> None:
    """Run ``start``, wait for SIGTERM or SIGINT, then run ``stop`` (once).

    Under systemd (``Type=notify``, see ``runtime_executor.notify``): ``READY=1`` once ``start``
    returned; ``WATCHDOG=1`` every half ``WatchdogSec`` but only while ``healthy()`` holds, so a hung
    daemon is killed and restarted by systemd; ``STOPPING=1`` on the signal. The watchdog keeps
    running during ``stop``: a runner's drain may take minutes and is not a hang.
    """
    stop_requested = threading.Event()
    notifier = Notifier.from_environ(unset=True)  # task processes started later must not inherit it

    def _handler(signum: int, _frame: Any) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    start()
    notifier.ready("serving")
    interval = notifier.watchdog_interval
    watchdog = Watchdog(notifier, healthy, interval).loop.start() if interval is not None else None
    # not a background loop: the main thread waits for the signal (Python runs its handlers only here)
    while not stop_requested.wait(0.5):
        pass
    notifier.stopping("stopping: finishing current work")
    try:
        stop()
    finally:
        if watchdog is not None:
            watchdog.stop()


class Watchdog:
    """``WATCHDOG=1`` every ``interval`` seconds while ``healthy()`` holds (a ``Loop``, "watchdog")."""

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool] | None, interval: float) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._was_healthy = True
        self.loop = Loop("watchdog", self._tick, interval)

    def _tick(self) -> None:
        try:
            ok = self._healthy is None or bool(self._healthy())
        except Exception:  # noqa: BLE001 - a failing check means "not healthy", never a dead watchdog
            log.exception("health check failed")
            ok = False
        if ok:
            self._notifier.watchdog()
        if ok != self._was_healthy:
            if ok:
                log.info("daemon healthy again; watchdog renewed")
                self._notifier.status("serving")
            else:
                log.error("daemon unhealthy; not renewing the systemd watchdog")
                self._notifier.status("unhealthy: not renewing the watchdog")
            self._was_healthy = ok


def loops_healthy(loops: Iterable[Any], stale_after: float) -> Callable[[], bool]:
    """A ``healthy`` check for ``serve_until_signal`` over ``runtime_executor.loop.Loop`` objects:
    each loop's thread is alive and finished a tick without error within ``stale_after`` seconds
    (or three of its own intervals, when that is longer). A database outage therefore turns a
    daemon unhealthy only after ``stale_after``; a dead or stuck loop does too."""
    loops = list(loops)
    reported: set[str] = set()

    def check() -> bool:
        now = time.monotonic()
        bad = {
            loop.name: "thread ended"
            if not loop.is_alive()
            else f"no successful tick for {now - loop.last_ok:.0f} s"
            for loop in loops
            if not loop.is_alive() or now - loop.last_ok > max(stale_after, 3 * loop.interval)
        }
        for name in bad.keys() - reported:
            log.warning("loop unhealthy", loop=name, problem=bad[name])
        reported.intersection_update(bad)
        reported.update(bad)
        return not bad

    return check
