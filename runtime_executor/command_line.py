"""What every rtx command-line entry point shares: common flags, settings from them, start-up checks
and one-line errors (``rtx``, ``rtx-allocator``, ``rtx-runner``).

Start-up errors (a bad setting, an unreachable database, a schema mismatch) end the process with
exit code 1 and one line on stderr, never a traceback and never a password.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from runtime_executor.db.connection import DatabaseUnavailable, connect
from runtime_executor.db.migrate import SchemaMismatch, check_schema
from runtime_executor.logs import configure_logging
from runtime_executor.settings import ConfigError, Settings, load_settings, redact_url

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
        click.option(
            "--schema", default=None, help="Postgres schema of rtx's tables (default runtime_executor)."
        ),
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
