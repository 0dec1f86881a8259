"""rtx's daemons through PgBouncer in session mode (docs/scaling.md#pgbouncer), a real PgBouncer from
Debian's package in front of the test database.

What the doc's recipe claims, checked: with ``ignore_startup_parameters = options`` PgBouncer
accepts rtx's connections (it refuses them otherwise, naming ``options``), the runner's and the
allocator's LISTEN work through a session pool (work reaches a runner by NOTIFY alone here: both
polls are far slower than the test), and every connection of the daemons is a PgBouncer client.
Transaction pooling is not run: Debian 12 ships PgBouncer 1.18, and psycopg's prepared statements
need 1.21 with ``max_prepared_statements`` there (the doc says so).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from runtime_executor.db.connection import DatabaseUnavailable, connect
from runtime_executor.settings import Settings
from testing.daemons import Daemons, query, wait_for
from testing.pgcluster import free_port
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, read_records, wait_runners, wait_states

PGBOUNCER = shutil.which("pgbouncer") or next((p for p in ["/usr/sbin/pgbouncer"] if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="needs Debian's pgbouncer (installed by .ci/run)")

DONE = {"succeeded", "failed", "lost", "cancelled"}
# work reaches the runner and the allocator by NOTIFY only: polls far slower than the test
NOTIFY_ONLY = {
    **FAST,
    "RTX_LEASE_TIMEOUT": "20",
    "RTX_RUNNER_POLL_INTERVAL": "120",
    "RTX_ALLOCATOR_POLL_INTERVAL": "120",
}


def _pgbouncer(db_url: str, ignore_options: bool) -> Iterator[str]:
    """A PgBouncer in session mode for the test database; yields its URL. It refuses to run as
    root, so it runs as the ``postgres`` user when the test runs as root."""
    target = urlsplit(db_url)
    folder = Path(tempfile.mkdtemp(prefix="rtx-pgbouncer-"))
    port = free_port()
    user = target.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"rtx = host={target.hostname} port={target.port or 5432} dbname={target.path.lstrip('/')}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 50\n"
        f"admin_users = {user}\n"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
        + ("ignore_startup_parameters = options\n" if ignore_options else "")
    )
    argv = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(folder, pg.pw_uid, pg.pw_gid)
        for child in folder.iterdir():
            os.chown(child, pg.pw_uid, pg.pw_gid)
        argv = ["runuser", "-u", "postgres", "--", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"postgresql://{user}@127.0.0.1:{port}/rtx"
    try:
        wait_for(lambda: _answers(url) or proc.poll() is not None, 20, what="pgbouncer to listen")
        assert proc.poll() is None, (folder / "pgbouncer.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def session_pool(db_url, migrated) -> Iterator[str]:
    yield from _pgbouncer(db_url, ignore_options=True)


def test_without_ignore_startup_parameters_pgbouncer_refuses_rtx_connections(db_url, migrated):
    """The recipe's ``ignore_startup_parameters = options`` is needed: rtx sends ``options``."""
    for url in _pgbouncer(db_url, ignore_options=False):
        with pytest.raises(DatabaseUnavailable, match="unsupported startup parameter: options"):
            connect(Settings(database_url=url), "rtx-test")


def test_daemons_through_a_session_pool_run_tasks_woken_by_notify(db, db_url, session_pool, tmp_path):
    record = tmp_path / "record.txt"
    daemons = Daemons(session_pool, tmp_path)
    try:
        daemons.allocator(**NOTIFY_ONLY)
        daemons.runner("--slots", "4", name="r1", **NOTIFY_ONLY)
        wait_runners(db_url, 1)
        time.sleep(1.0)  # past start-up: what follows is woken by NOTIFY, not by a first poll
        ids = insert_allocations(db, 6, workload={"record": str(record)})
        sent = time.monotonic()
        assert wait_states(db_url, ids, DONE, timeout=30) == dict.fromkeys(ids, "succeeded")
        took = time.monotonic() - sent
        assert took < 10, f"{took:.1f} s: far below the 120 s polls, so woken by NOTIFY through PgBouncer"
        assert sorted(r[1] for r in read_records(record) if r[0] == "start") == sorted(ids)
        # the daemons' connections are PgBouncer's clients (its admin console), with their names
        # passed on to the server connections
        clients = subprocess.run(
            ["psql", session_pool.replace("/rtx", "/pgbouncer"), "-Atc", "SHOW CLIENTS"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for app in ("rtx-runner:r1", "rtx-runner:r1-heartbeat", "rtx-allocator@"):
            assert app in clients, clients
        on_server = [
            app
            for (app,) in query(
                db_url,
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'rtx-%%'",
            )
        ]
        assert "rtx-runner:r1-heartbeat" in on_server, on_server
    finally:
        daemons.stop_all()
