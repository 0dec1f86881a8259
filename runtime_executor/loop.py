"""The one loop shape every background job in the allocator and the runner uses.

    start() -> tick() ... tick() -> stop()

A tick runs when the loop is woken (``wake()``, called by the ``Listener`` on a NOTIFY or by another
loop), or when ``interval`` has passed without a wake-up (the slow poll that covers a lost NOTIFY).
A loop that has a last step (the runner's drain) calls ``stop()`` from its own tick; its owner
waits for that with ``join()``.
A tick that returns True has more work at hand and runs again at once. A tick that raises is logged
and retried with exponential backoff; database outages therefore never kill a daemon, they only
slow a loop down until the database is back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable

import psycopg
import structlog

from runtime_executor.db.connection import Database, DatabaseUnavailable, connect
from runtime_executor.settings import Settings, error_line

log = structlog.get_logger("rtx.loop")

Tick = Callable[[], bool | None]


class Loop:
    def __init__(
        self,
        name: str,
        tick: Tick,
        interval: float,
        *,
        max_backoff: float = 10.0,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._tick = tick
        self.interval = interval
        self.max_backoff = max_backoff
        self._on_stop = on_stop
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.last_ok = time.monotonic()  # end of the last tick that did not raise (health checks)

    def start(self) -> Loop:
        self.last_ok = time.monotonic()
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._woken.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stopping.set()
        self._woken.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the loop has ended (one whose tick calls ``stop()`` when its work is done)."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._woken.clear()
                try:
                    more = self._tick()
                except Exception as exc:  # noqa: BLE001 - a loop must survive any failure of one tick
                    self.failures += 1
                    delay = min(self.max_backoff, 0.2 * 2 ** min(self.failures - 1, 10)) * random.uniform(
                        0.8, 1.2
                    )
                    self._log_failure(exc, delay)
                    self._stopping.wait(delay)
                    continue
                self.last_ok = time.monotonic()
                if self.failures:
                    log.info("loop recovered", loop=self.name, after_failures=self.failures)
                    self.failures = 0
                if not more:
                    self._woken.wait(self.interval)
        finally:
            if self._on_stop is not None:
                self._on_stop()

    def _log_failure(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, psycopg.OperationalError | DatabaseUnavailable):
            log.warning(
                "database unavailable; retrying",
                loop=self.name,
                error=error_line(exc),
                retry_in=round(delay, 2),
                attempt=self.failures,
            )
        else:
            log.exception("loop tick failed; retrying", loop=self.name, retry_in=round(delay, 2))


class Listener:
    """LISTENs on channels of the schema and wakes the loops registered for each.

    Either a ``Loop`` of its own on a connection of its own (``start``), or no thread and no
    connection of its own: ``wait_on(db, timeout)`` listens on another loop's ``Database`` and waits
    there (the runner's heartbeat loop waits for NOTIFYs between heartbeats, one connection for
    both). Either way, after (re)connecting, or subscribing to a channel while listening, it wakes
    the callbacks of every channel it starts to LISTEN on, because notifications sent before are not
    heard.
    """

    def __init__(self, settings: Settings, application_name: str) -> None:
        self.settings = settings
        self.application_name = application_name
        self._targets: dict[str, list[Callable[[str], None]]] = {}
        self._conn: psycopg.Connection | None = None
        self._listening_on: psycopg.Connection | None = None  # wait_on: the borrowed connection LISTENed on
        self._listened: set[str] = set()  # the channels the current connection LISTENs on
        self.loop = Loop(f"{application_name}-listener", self._tick, interval=0.0, on_stop=self._close)

    def subscribe(self, channel: str, callbacks: Iterable[Callable[[str], None]]) -> None:
        """Call each callback with the payload of every NOTIFY on ``channel`` (a name from
        ``runtime_executor.db.channels``). May be called while listening: the next wait LISTENs."""
        self._targets.setdefault(channel, []).extend(callbacks)

    def unsubscribe(self, channel: str) -> None:
        """Stop listening on ``channel`` (the next wait UNLISTENs it)."""
        self._targets.pop(channel, None)

    def _sync_channels(self, conn: psycopg.Connection) -> None:
        """LISTEN to what was subscribed and UNLISTEN what was dropped since ``conn`` last did. A
        channel's callbacks are woken once it is listened to: what was sent before is not heard."""
        wanted = set(self._targets)
        added = wanted - self._listened
        for channel in added:
            conn.execute(f'LISTEN "{channel}"')
        for channel in self._listened - wanted:
            conn.execute(f'UNLISTEN "{channel}"')
        self._listened = wanted
        for channel in added:
            for callback in self._targets[channel]:
                callback("")

    def start(self) -> Listener:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()

    def _tick(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, self.application_name)
            self._listened = set()  # a new connection: every channel is new, every callback woken
        try:
            self._sync_channels(self._conn)
            for notify in self._conn.notifies(timeout=0.5):
                for callback in self._targets.get(notify.channel, ()):
                    callback(notify.payload)
                if self.loop.stopping:
                    break
        except psycopg.OperationalError:
            self._close()
            raise
        return True  # keep listening without the loop's idle wait

    def wait_on(self, db: Database, timeout: float) -> None:
        """On ``db``'s connection: LISTEN to what is not yet listened to there (waking its callbacks), then dispatch
        notifications until some arrive or ``timeout`` passes. Raises what the connection raises
        (``db`` then reconnects on its next use)."""
        with db.held() as conn:
            if conn is not self._listening_on:  # a new connection: every channel is new, every callback woken
                self._listened = set()
                self._listening_on = conn
            self._sync_channels(conn)  # also after a subscription changed (a runner registered again)
            # stop_after=1: back to the caller as soon as something arrived (it may want to act)
            for notify in conn.notifies(timeout=max(0.0, timeout), stop_after=1):
                for callback in self._targets.get(notify.channel, ()):
                    callback(notify.payload)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
