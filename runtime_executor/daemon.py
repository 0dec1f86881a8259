"""What every rtx command-line entry point shares: common flags, start-up checks, signals, errors.

Start-up errors (a bad setting, an unreachable database, a schema mismatch) end the process with
exit code 1 and one line on stderr, never a traceback and never a password.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import click
import structlog

from runtime_executor.db.connection import DatabaseUnavailable, connect
from runtime_executor.db.migrate import SchemaMismatch, check_schema
from runtime_executor.logs import configure_logging
from runtime_executor.notify import Notifier
from runtime_executor.settings import ConfigError, Settings, load_settings, redact_url

log = structlog.get_logger("rtx.daemon")

STARTUP_ERRORS = (ConfigError, DatabaseUnavailable, SchemaMismatch, ValueError)


class CommandGroup(click.Group):
    """A click group whose usage errors are one line (``error: ...``, exit 2), like every other
    start-up error of rtx, instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `rtx`: show the help
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.ClickException as exc:
            click.echo(f"error: {redact_url(exc.format_message())} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)


def fail(message: str) -> NoReturn:
    click.echo(f"error: {redact_url(message)}", err=True)
    sys.exit(1)


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flags every daemon and the CLI take (each also settable as RTX_<NAME> / [runtime_executor])."""
    options = [
        click.option(
            "--database-url",
            default=None,
            help="Postgres URL (default: RTX_DATABASE_URL, then Airflow's [database] sql_alchemy_conn). "
            "Prefer the environment variable: a password on the command line is visible to other users.",
        ),
        click.option("--schema", default=None, help="Postgres schema of rtx's tables (default runtime_executor)."),
        click.option(
            "--log-format", type=click.Choice(["auto", "console", "json"]), default=None, help="Log format."
        ),
        click.option("--log-level", default=None, help="debug, info, warning or error."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_cli(**overrides: Any) -> Settings:
    try:
        settings = load_settings(**overrides)
        configure_logging(settings.log_format, settings.log_level)
        return settings
    except STARTUP_ERRORS as exc:
        fail(str(exc))


def check_database(settings: Settings, application_name: str) -> None:
    """Fail fast and clearly when the database is unreachable or its schema does not match the code."""
    try:
        conn = connect(settings, application_name)
        try:
            check_schema(conn, settings.schema)
        finally:
            conn.close()
    except STARTUP_ERRORS as exc:
        fail(str(exc))


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
    stopped = threading.Event()
    interval = notifier.watchdog_interval
    if interval is not None:
        threading.Thread(
            target=_watchdog, args=(notifier, healthy, interval, stopped), name="watchdog", daemon=True
        ).start()
    while not stop_requested.wait(0.5):
        pass
    notifier.stopping("stopping: finishing current work")
    try:
        stop()
    finally:
        stopped.set()


def _watchdog(
    notifier: Notifier, healthy: Callable[[], bool] | None, interval: float, stopped: threading.Event
) -> None:
    was_healthy = True
    while True:
        try:
            ok = healthy is None or bool(healthy())
        except Exception:  # noqa: BLE001 - a failing check means "not healthy", never a dead watchdog
            log.exception("health check failed")
            ok = False
        if ok:
            notifier.watchdog()
        if ok != was_healthy:
            if ok:
                log.info("daemon healthy again; watchdog renewed")
                notifier.status("serving")
            else:
                log.error("daemon unhealthy; not renewing the systemd watchdog")
                notifier.status("unhealthy: not renewing the watchdog")
            was_healthy = ok
        if stopped.wait(interval):
            return


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
