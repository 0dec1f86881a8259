"""Step 5: one run of ``rtx_example`` through the REST API, waited for, shown as a table of where
each task ran (Airflow's task instances joined with rtx's allocations, read through the gateway)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from demo.airflow_api import Api
from demo.config import DAG_ID, DAGS
from demo.progress import DemoError, rel, say, step, wait_until
from runtime_executor.db.connection import Database, DatabaseUnavailable
from runtime_executor.settings import ConfigError, load_settings


def placements(env: dict[str, str], run_id: str) -> dict[tuple[str, int], tuple]:
    """(task, map index) -> (runner name, slots, cpu, memory MB), from rtx's allocation rows.

    The settings (database and schema) are the ones the demo's daemons get, read from ``env``.
    Nothing (an empty table column) when the database does not answer: this is only for display."""
    with contextlib.suppress(psycopg.Error, DatabaseUnavailable, ConfigError):
        db = Database(load_settings(env), "rtx-demo")
        try:
            with db.statements() as gateway:
                rows = gateway.run_placements(DAG_ID, run_id)
        finally:
            db.close()
        return {
            (r["task_id"], r["map_index"]): (r["runner"], r["slots"], r["cpu"], r["memory_mb"]) for r in rows
        }
    return {}


def task_table(api: Api, env: dict[str, str], run_id: str) -> tuple[list[str], list[str]]:
    """The lines of the table, and a ``task state`` entry for each task that did not succeed."""
    tis = sorted(
        api.task_instances(DAG_ID, run_id),
        key=lambda t: (t.get("start_date") or "~", t["task_id"], t["map_index"]),
    )
    placed = placements(env, run_id)
    rows = [["task", "state", "runner", "slots/cpu/MB", "ran"]]
    failed = []
    for ti in tis:
        label = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
        runner, slots, cpu, memory = placed.get((ti["task_id"], ti["map_index"]), ("-", None, None, None))
        request = f"{slots}/{cpu:g}/{memory}" if slots is not None else "-"
        duration = f"{ti['duration']:.1f}s" if ti.get("duration") is not None else "-"
        rows.append([label, str(ti["state"]), runner or "-", request, duration])
        if ti["state"] != "success":
            failed.append(f"{label} {ti['state']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "        " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return lines, failed


def example_run(
    base_url: str,
    env: dict[str, str],
    home: Path,
    logs: Path,
    total: int,
    timeout: float,
    alive: Callable[[], Any],
) -> None:
    """Wait for the DAG to be parsed, unpause and trigger it, wait for the run, print the table.
    A run that ends ``failed`` is a DemoError naming the failed tasks."""
    api = Api(base_url, logs / "api-server.log")
    with step(5, total, "example") as s:

        def parsed() -> bool:
            if api.dag(DAG_ID) is not None:
                return True
            for error in api.import_errors():
                if error.get("filename", "").endswith("rtx_example.py"):
                    last = error.get("stack_trace", "").strip().splitlines()[-1:]
                    raise DemoError(
                        f"{DAG_ID} does not import: {last[0] if last else '?'}", DAGS / "rtx_example.py"
                    )
            return False

        wait_until(f"DAG {DAG_ID} was not parsed", parsed, 180, logs / "dag-processor.log", check=alive)
        api.unpause(DAG_ID)
        run_id = api.trigger(DAG_ID)

        def finished() -> str | None:
            state = api.run_state(DAG_ID, run_id)
            return state if state in ("success", "failed") else None

        where = [logs / "scheduler.log", logs / "demo-small.log", logs / "demo-large.log"]
        final = wait_until(f"run {DAG_ID} {run_id} did not finish", finished, timeout, where, check=alive)
        lines, failed = task_table(api, env, run_id)
        s.lines = lines
        if final != "success":
            for line in lines:
                say(line)
            raise DemoError(
                f"run {DAG_ID} {run_id} {final}: {', '.join(failed) or 'see the UI'}",
                f"see the task logs in the UI ({base_url}/) or in {rel(home / 'logs')}/, and {rel(logs)}/",
            )
        s.detail = f"{DAG_ID} triggered through the REST API, run {run_id}: {final}"
