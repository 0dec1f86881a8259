"""Connections for the daemons, the shim's own reads and the CLI.

Each background loop owns one ``Database`` (one connection, opened lazily). When the server goes
away the connection is dropped and the next use reconnects; the loop that called backs off
(see ``runtime_executor.loop``). Passwords never reach a log line: errors are re-raised with
``redact_url`` applied.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg.pq import TransactionStatus

from runtime_executor.db.gateway import Gateway
from runtime_executor.settings import Settings, error_line, redact_url


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message is safe to log (no password)."""


def session_options(settings: Settings, *, async_commit: bool = False, plan_once: bool = False) -> str:
    """Server settings of every rtx session.

    Invariant: an rtx session bounds what it can hold. A lock wait ends after ``lock_timeout``, a
    statement after ``statement_timeout``, and a session that stops talking inside a transaction
    (frozen, cut off) is ended by the server after ``idle_in_transaction_timeout``, releasing its
    locks; TCP keepalives (both ways) notice a vanished peer. Each ends in a psycopg error that the
    calling loop retries with backoff (a session the server ended is reopened).

    jit=off: rtx runs short statements; JIT compiles (~20 ms) whenever a row estimate is large (the
    claim's) and never pays back. For synchronous_commit=off and plan_cache_mode see Database.
    """
    options = [
        "jit=off",
        f"lock_timeout={round(settings.lock_timeout * 1000)}",
        f"idle_in_transaction_session_timeout={round(settings.idle_in_transaction_timeout * 1000)}",
        f"statement_timeout={round(settings.statement_timeout * 1000)}",
        f"tcp_keepalives_idle={settings.keepalives_idle}",
        f"tcp_keepalives_interval={settings.keepalives_interval}",
        f"tcp_keepalives_count={settings.keepalives_count}",
    ]
    if async_commit:
        options.append("synchronous_commit=off")
    if plan_once:
        options.append("plan_cache_mode=force_generic_plan")
    return " ".join(f"-c {o}" for o in options)


def connect(
    settings: Settings,
    application_name: str,
    *,
    autocommit: bool = True,
    async_commit: bool = False,
    plan_once: bool = False,
) -> psycopg.Connection:
    if not settings.database_url:
        raise DatabaseUnavailable(
            "no database configured: set RTX_DATABASE_URL (or --database-url) or Airflow's "
            "[database] sql_alchemy_conn"
        )
    try:
        conn = psycopg.Connection.connect(
            settings.database_url,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=5,
            # notice a dead peer (and let the server notice us) within idle + interval * count s
            keepalives=1,
            keepalives_idle=settings.keepalives_idle,
            keepalives_interval=settings.keepalives_interval,
            keepalives_count=settings.keepalives_count,
            options=session_options(settings, async_commit=async_commit, plan_once=plan_once),
        )
    except psycopg.Error as exc:
        message = error_line(exc)
        raise DatabaseUnavailable(
            f"cannot connect to {redact_url(settings.database_url)}: {message}"
        ) from None
    if plan_once:
        conn.prepare_threshold = 0  # prepared at the first execution (psycopg's default: the sixth)
    return conn


class Database:
    """One lazily (re)opened connection and the gateway over it.

    Several threads may share one ``Database``: each ``transaction()`` / ``statements()`` block
    holds the connection for itself (a lock), so one thread's statements never land inside another's
    transaction. Sharing is only for loops that may wait on each other: a heartbeat keeps a
    ``Database`` of its own (see runner.service).
    """

    def __init__(
        self,
        settings: Settings,
        application_name: str,
        *,
        async_commit: bool = False,
        plan_once: bool = False,
    ) -> None:
        """``async_commit``: commits do not wait for the WAL flush. Only for the allocator's
        placement passes: an assignment lost in a crash reverts to 'unassigned', and anything that
        depends on it (a runner's synchronous start) flushes the WAL up to and including it first.

        ``plan_once``: each statement is prepared at its first execution and planned once (a generic
        plan), instead of parsed and planned anew for its first five executions (psycopg's prepare
        threshold) and then five more (the server's custom plans). For a connection that runs a few
        key lookups seldom: the runner's heartbeat, whose idle renewals come every ``lease_timeout /
        2`` s, spent its first two minutes there at 1.6 ms of server CPU per renewal against 0.4 ms
        after (docs/scaling.md). Not for statements whose best plan depends on their values."""
        self.settings = settings
        self.application_name = application_name
        self.async_commit = async_commit
        self.plan_once = plan_once
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()

    @property
    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.settings, self.application_name, async_commit=self.async_commit, plan_once=self.plan_once
            )
        return self._conn

    @contextmanager
    def held(self) -> Iterator[psycopg.Connection]:
        """The connection itself, held by this thread for the block (also for LISTEN and waiting on
        NOTIFY: runtime_executor.loop.Listener.wait_on). A lost connection, or one the server ended
        (e.g. idle_in_transaction_timeout), is closed so the next call reconnects."""
        with self._lock:
            conn = self.connection
            try:
                yield conn
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or conn.broken:
                    self.close()
                raise

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[Gateway]:
        """One transaction; commits on success.

        ``pipelined``: in psycopg's pipeline mode, with BEGIN sent along with the first statements
        and COMMIT with the last (``Gateway.send``), and ``Gateway.fetch_batch`` answering several
        statements in one round trip. The statements and their order are the same; only the waits
        between them go: a pass of the allocator is four round trips. (psycopg's own
        ``transaction()`` syncs after BEGIN and twice at the end in pipeline mode.)"""
        if not pipelined:
            with self.held() as conn, conn.transaction():
                yield Gateway(conn, self.settings.schema)
            return
        with self.held() as conn:
            try:
                with conn.pipeline() as pipeline:  # leaving it sends what is queued, waits for every answer
                    conn.execute("BEGIN")
                    yield Gateway(conn, self.settings.schema, pipeline)
                    conn.execute("COMMIT")
            except BaseException:
                # an error, or a block that raised with statements already run: end the transaction
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextmanager
    def statements(self) -> Iterator[Gateway]:
        """Autocommit: each statement is its own transaction (saves BEGIN/COMMIT round trips on
        hot paths where a single guarded statement is the whole state change)."""
        with self.held() as conn:
            yield Gateway(conn, self.settings.schema)

    def close(self) -> None:
        # no lock: close() may come from another thread to stop a daemon; psycopg's own lock
        # makes the close itself safe, and the next use reconnects
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
