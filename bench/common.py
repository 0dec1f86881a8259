"""Shared set-up for benchmarks: a real Postgres database (the local server, or a throwaway cluster)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from runtime_executor.db.gateway import Gateway, for_schema
from runtime_executor.db.migrate import migrate
from runtime_executor.settings import Settings
from testing.pgcluster import PgCluster, create_database, drop_database, server_answers

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA = Settings.schema  # rtx's default: what the daemons a benchmark starts use


def sql(text: str) -> str:
    """A benchmark's own SQL (bulk fixtures by generate_series, checks no component makes) with
    ``{schema}`` spliced in the gateway's way; whatever a component does goes through ``gateway``."""
    return for_schema(text, SCHEMA)


@contextlib.contextmanager
def gateway(url: str) -> Iterator[Gateway]:
    """The gateway's named queries on a short autocommit connection to the benchmark's database."""
    with psycopg.connect(url, autocommit=True) as conn:
        yield Gateway(conn, SCHEMA)


def active_runners(url: str) -> int:
    with gateway(url) as gw:
        return sum(1 for r in gw.status_runners() if r["state"] == "active")


def allocations_in(url: str, state: str) -> int:
    with gateway(url) as gw:
        return sum(int(r["count"]) for r in gw.count_by_state() if r["state"] == state)


@contextlib.contextmanager
def bench_database(schema: str = SCHEMA, *, own_cluster_options: str | None = None) -> Iterator[str]:
    """A fresh, migrated database; ``$RTX_BENCH_PG_URL`` (admin URL) or the local server or a temporary cluster.

    ``own_cluster_options``: always a temporary cluster of its own, with these server options (a
    benchmark that needs more connections than a shared server allows, or a server to itself)."""
    admin = os.environ.get("RTX_BENCH_PG_URL", DEFAULT_ADMIN_URL)
    cluster = None
    if own_cluster_options is not None or not server_answers(admin):
        root = Path(tempfile.mkdtemp(prefix="rtx-bench-pg-"))
        cluster = PgCluster(root, extra_options=own_cluster_options or "").start()
        admin = cluster.admin_url
    name = f"rtx_bench_{uuid.uuid4().hex[:8]}"
    create_database(admin, name)
    url = urlsplit(admin)._replace(path=f"/{name}").geturl()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema)
        yield url
    finally:
        drop_database(admin, name)
        if cluster is not None:
            cluster.destroy()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
