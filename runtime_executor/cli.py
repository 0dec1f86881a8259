"""``rtx``: database migrations, status, runner maintenance."""

from __future__ import annotations

import json
import sys
import time

import click
import psycopg

from runtime_executor.daemon import STARTUP_ERRORS, CommandGroup, common_options, fail, settings_from_cli
from runtime_executor.db.connection import Database, connect
from runtime_executor.db.migrate import grant, latest_version, migrate


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
        fail(f"cannot grant: {str(exc).strip().splitlines()[0]}")
    click.echo(f"granted {group} to {login}")


def _format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _triple(values: dict) -> str:
    return f"{values['slots']:g}/{values['cpu']:g}/{values['memory_mb']:g}"


def _task_label(a: dict) -> str:
    if a["kind"] == "callback":
        return f"callback {a['callback_id']}"
    label = f"{a['dag_id']}.{a['task_id']}"
    if a["map_index"] is not None and a["map_index"] >= 0:
        label += f"[{a['map_index']}]"
    return f"{label} {a['run_id']} try {a['try_number']}"


def _listed(shown: int, total: int) -> str:
    """The list is cut at the snapshot's limit; the count beside it is exact."""
    return f" (first {shown} of {total})" if shown < total else ""


def render_status(snap: dict) -> str:
    t = snap["totals"]
    out = [
        f"rtx status at {snap['generated_at']}",
        "",
        "Resources (capacity / reserved / free)",
        _format_table(
            ["scope", "runners", "slots", "cpu", "memory MB", "unassigned"],
            [
                [
                    "all",
                    str(t["runners"]),
                    *(
                        f"{t[d]['capacity']:g} / {t[d]['reserved']:g} / {t[d]['free']:g}"
                        for d in ("slots", "cpu", "memory_mb")
                    ),
                    str(t["allocations"].get("unassigned", 0)),  # exact: not the listed rows
                ]
            ]
            + [
                [
                    f"queue {q}",
                    str(e["runners"]),
                    *(
                        f"{e[d]['capacity']:g} / {e[d]['reserved']:g} / {e[d]['free']:g}"
                        for d in ("slots", "cpu", "memory_mb")
                    ),
                    str(e["unassigned"]),
                ]
                for q, e in snap["queues"].items()
            ],
        ),
        "",
        "Runners (slots/cpu/memory MB)",
        _format_table(
            ["name", "host", "queues", "state", "capacity", "reserved", "heartbeat", "allocations"],
            [
                [
                    r["name"],
                    r["hostname"],
                    ",".join(r["queues"]),
                    r["state"],
                    _triple(r["capacity"]),
                    _triple(r["reserved"]),
                    f"{r['heartbeat_age_s']:.1f}s ago",
                    str(r.get("allocation_count", len(r["allocations"]))),
                ]
                for r in snap["runners"]
            ],
        ),
        "",
        "Allocations on runners"
        + _listed(
            sum(len(r["allocations"]) for r in snap["runners"]),
            sum(r.get("allocation_count", len(r["allocations"])) for r in snap["runners"]),
        ),
        _format_table(
            ["runner", "task", "state", "request", "running"],
            [
                [
                    r["name"],
                    _task_label(a),
                    a["state"],
                    _triple(a["request"]),
                    f"{a['running_s']:.1f}s" if a["running_s"] is not None else "-",
                ]
                for r in snap["runners"]
                for a in r["allocations"]
            ],
        ),
        "",
        "Unassigned allocations" + _listed(len(snap["unassigned"]), t["allocations"].get("unassigned", 0)),
        _format_table(
            ["task", "queue", "priority", "request", "waiting", "unschedulable"],
            [
                [
                    _task_label(a),
                    a["queue"],
                    str(a["priority_weight"]),
                    _triple(a["request"]),
                    f"{a['waiting_s']:.1f}s",
                    a["unschedulable_reason"] or "",
                ]
                for a in snap["unassigned"]
            ],
        ),
        "",
        "Allocations by state: "
        + (", ".join(f"{k} {v}" for k, v in sorted(t["allocations"].items())) or "none"),
    ]
    return "\n".join(out)


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON (for scripts).")
@click.option(
    "--watch", type=float, default=None, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C."
)
def status(as_json: bool, watch: float | None, **options) -> None:
    """Show runners, their allocations, unassigned allocations and totals."""
    from runtime_executor.status import snapshot

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
            fail(f"cannot read status: {str(exc).strip().splitlines()[0]}")
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
            rows = gw.fetch("find_runner", {"ref": name_or_id})
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
