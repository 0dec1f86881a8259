"""``rtx``: database migrations, status, runner maintenance."""

from __future__ import annotations

import json
import sys
import time

import click
import psycopg

from runtime_executor.command_line import (
    STARTUP_ERRORS,
    CommandGroup,
    common_options,
    fail,
    settings_from_cli,
)
from runtime_executor.db.connection import Database, connect
from runtime_executor.db.migrate import grant, latest_version, migrate
from runtime_executor.settings import error_line


@click.group(cls=CommandGroup)
def main() -> None:
    """rtx: the Runtime executor for Apache Airflow."""


@main.group()
def db() -> None:
    """Schema management."""


@db.command("migrate")
@common_options
def db_migrate(**options) -> None:
    """Create or upgrade rtx's schema (safe to run concurrently and repeatedly)."""
    settings = settings_from_cli(**options)
    try:
        conn = connect(settings, "rtx-cli")
        try:
            applied = migrate(conn, settings.schema)
        finally:
            conn.close()
    except STARTUP_ERRORS as exc:
        fail(str(exc))
    if applied:
        click.echo(
            f"schema {settings.schema}: applied {', '.join(applied)} (now at version {latest_version()})"
        )
    else:
        click.echo(f"schema {settings.schema}: up to date (version {latest_version()})")


@db.command("grant")
@common_options
@click.argument("role", type=click.Choice(["executor", "allocator", "runner", "status"]))
@click.argument("login")
def db_grant(role: str, login: str, **options) -> None:
    """Give LOGIN (an existing Postgres role) only what the ROLE component needs.

    Creates the group roles <schema>_executor, _allocator, _runner and _status (idempotent) and
    grants one of them to LOGIN. Run it as the owner of rtx's schema.
    """
    settings = settings_from_cli(**options)
    try:
        conn = connect(settings, "rtx-cli")
        try:
            group = grant(conn, settings.schema, role, login)
        finally:
            conn.close()
    except STARTUP_ERRORS as exc:
        fail(str(exc))
    except psycopg.Error as exc:
        fail(f"cannot grant: {error_line(exc)}")
    click.echo(f"granted {group} to {login}")


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON (for scripts).")
@click.option(
    "--watch", type=float, default=None, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C."
)
def status(as_json: bool, watch: float | None, **options) -> None:
    """Show runners, their allocations, unassigned allocations and totals."""
    from runtime_executor.status import snapshot
    from runtime_executor.status_text import render_status

    settings = settings_from_cli(**options)
    db_ = Database(settings, "rtx-status")
    while True:
        try:
            with db_.transaction() as gw:
                snap = snapshot(gw)
        except STARTUP_ERRORS as exc:
            fail(str(exc))
        except psycopg.errors.UndefinedTable:
            fail(f'rtx schema "{settings.schema}" not found in this database: run `rtx db migrate`')
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            fail(f"cannot read status: {error_line(exc)}")
        text = json.dumps(snap, indent=2, default=str) if as_json else render_status(snap)
        if watch is None:
            click.echo(text)
            return
        click.echo("\x1b[2J\x1b[H" + text if sys.stdout.isatty() else text)
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


@main.group()
def runner() -> None:
    """Runner maintenance."""


def _set_runner_state(options: dict, name_or_id: str, to_state: str, from_state: str) -> None:
    settings = settings_from_cli(**options)
    db_ = Database(settings, "rtx-cli")
    try:
        with db_.transaction() as gw:
            rows = gw.find_live_runners(name_or_id)
            if not rows:
                fail(f"no live runner named or with id {name_or_id!r}")
            for row in rows:
                if gw.set_runner_state(str(row["id"]), to_state, [from_state]):
                    click.echo(f"runner {row['name']} ({row['id']}): {from_state} -> {to_state}")
                else:
                    click.echo(f"runner {row['name']} ({row['id']}): is {row['state']}, left as is")
    except STARTUP_ERRORS as exc:
        fail(str(exc))


@runner.command()
@common_options
@click.argument("runner_ref")
def drain(runner_ref: str, **options) -> None:
    """Stop RUNNER_REF (name or id) taking new work; running tasks finish."""
    _set_runner_state(options, runner_ref, "draining", "active")


@runner.command()
@common_options
@click.argument("runner_ref")
def resume(runner_ref: str, **options) -> None:
    """Let a drained RUNNER_REF (name or id) take work again."""
    _set_runner_state(options, runner_ref, "active", "draining")
