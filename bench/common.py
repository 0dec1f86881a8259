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

from runtime_executor.db.migrate import migrate
from testing.pgcluster import PgCluster, create_database, drop_database, server_answers

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def bench_database(schema: str = "runtime_executor") -> Iterator[str]:
    """A fresh, migrated database; ``$RTX_BENCH_PG_URL`` (admin URL) or the local server or a temporary cluster."""
    admin = os.environ.get("RTX_BENCH_PG_URL", DEFAULT_ADMIN_URL)
    cluster = None
    if not server_answers(admin):
        cluster = PgCluster(Path(tempfile.mkdtemp(prefix="rtx-bench-pg-"))).start()
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
