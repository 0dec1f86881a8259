"""Versioned schema migrations: ``migrations/NNNN_name.sql``, applied in order, each once.

``migrate`` runs in one transaction under a transaction-level advisory lock, so any number of
components starting at once apply each migration exactly once (DDL is transactional in Postgres).
Components apply migrations by themselves only to an empty schema; upgrading an existing schema is
the operator's deliberate ``rtx db migrate``. A schema newer than the code is refused.
"""

from __future__ import annotations

import re
from importlib import resources

from runtime_executor.db.gateway import for_schema
from runtime_executor.settings import check_schema_name

_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaMismatch(RuntimeError):
    """The database schema and the code disagree; the message says what to run."""


def migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("runtime_executor.db").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


def current_version(conn, schema: str) -> int:
    """The highest applied migration, 0 for an empty or missing schema.

    Tables of rtx without a version record are refused: that schema was not made by ``migrate``.
    """
    cur = conn.cursor()
    try:
        cur.execute("SELECT to_regclass(%(t)s)", {"t": f'"{schema}".schema_migrations'})
        has_versions = cur.fetchone()[0] is not None
        version = 0
        if has_versions:
            cur.execute(f'SELECT coalesce(max(version), 0) FROM "{schema}".schema_migrations')
            version = int(cur.fetchone()[0])
        if version == 0:
            cur.execute("SELECT to_regclass(%(t)s)", {"t": f'"{schema}".allocations'})
            if cur.fetchone()[0] is not None:
                raise SchemaMismatch(
                    f'rtx schema "{schema}" has tables but no migration record; '
                    "restore the schema_migrations table or drop the schema and run `rtx db migrate`"
                )
        return version
    finally:
        cur.close()


def migrate(conn, schema: str) -> list[str]:
    """Apply every pending migration; returns the names applied. ``conn`` must be in autocommit mode."""
    check_schema_name(schema)
    applied: list[str] = []
    with conn.transaction():
        cur = conn.cursor()
        # DDL may wait for locks and build indexes on big tables: no session limit applies here
        cur.execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%(k)s, 0))", {"k": f"rtx.migrate.{schema}"}
        )
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        cur.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        cur.execute(f'SELECT version FROM "{schema}".schema_migrations')
        done = {row[0] for row in cur.fetchall()}
        for version, name, sql in migrations():
            if version in done:
                continue
            cur.execute(for_schema(sql, schema))
            cur.execute(
                f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES (%(v)s, %(n)s)',
                {"v": version, "n": name},
            )
            applied.append(name)
    return applied


def check_schema(conn, schema: str, *, create_if_empty: bool = True) -> int:
    """Make sure the schema matches the code: apply migrations to an empty schema, refuse otherwise."""
    version, latest = current_version(conn, schema), latest_version()
    if version == 0 and create_if_empty:
        migrate(conn, schema)
        return latest
    if version < latest:
        raise SchemaMismatch(
            f'rtx schema "{schema}" is at version {version}, the code needs {latest}: run `rtx db migrate`'
        )
    if version > latest:
        raise SchemaMismatch(
            f'rtx schema "{schema}" is at version {version}, newer than this code ({latest}): upgrade rtx'
        )
    return version


ROLE_KINDS = ("executor", "allocator", "runner", "status")


def grant(conn, schema: str, kind: str, login: str) -> str:
    """Create (or refresh) the least-privilege group roles and grant ``<schema>_<kind>`` to ``login``."""
    from psycopg import sql

    check_schema_name(schema)
    if kind not in ROLE_KINDS:
        raise ValueError(f"role {kind!r} must be one of {', '.join(ROLE_KINDS)}")
    text = resources.files("runtime_executor.db").joinpath("grants.sql").read_text()
    text = for_schema(text, schema).replace("{prefix}", schema)
    group = f"{schema}_{kind}"
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%(k)s, 0))", {"k": f"rtx.grant.{schema}"})
        cur.execute(text)
        cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login)))
    return group
