"""The FastAPI app mounted by the api-server at ``/runtime-executor``.

* ``GET /``           the page: one self-contained HTML document (inline CSS and JS). It holds no
                      data, so it needs no login; everything it shows comes from the JSON below.
* ``GET /api/status`` ``runtime_executor.status.snapshot`` plus, for every allocation, ``ui_path``:
                      its task instance in the Airflow UI. Needs a logged-in user allowed to see
                      the Jobs view (``Authorization: Bearer <jwt>`` or the UI's ``_token`` cookie).
* ``GET /icon.svg``   the menu icon.

The JSON route is a plain ``def``: FastAPI runs it in its thread pool, so the (short) database
read never blocks the api-server's event loop. One connection per api-server process is opened
on first use and reused; a lock serialises the reads on it. A kept connection that died while
idle is replaced within the same request; any other failure closes it, answers 503 with the cause
(never the database's address or credentials) and the next request reconnects. The transaction
is read-only with a statement timeout.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import quote

import psycopg
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from runtime_executor.db.connection import Database, DatabaseUnavailable
from runtime_executor.settings import ConfigError, Settings, load_settings, redact_url
from runtime_executor.status import snapshot

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 15.0
STATEMENT_TIMEOUT_MS = 10_000

ICON_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#4a5568"
 stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><rect x="3" y="4" width="18" height="6" rx="1.5"/>
<rect x="3" y="14" width="18" height="6" rx="1.5"/><path d="M7 7h4M7 17h7"/><circle cx="17" cy="7" r="1"
 fill="#4a5568"/><circle cx="17" cy="17" r="1" fill="#4a5568"/></svg>"""


def ui_path(allocation: dict[str, Any], base_path: str = "") -> str | None:
    """The task instance of ``allocation`` in the Airflow 3.3 UI (React routes
    ``dags/:dagId/runs/:runId/tasks/:taskId[/mapped/:mapIndex]``); None for callbacks."""
    if allocation.get("kind") != "task" or not (allocation.get("dag_id") and allocation.get("run_id")):
        return None
    parts = [quote(str(allocation[k]), safe="") for k in ("dag_id", "run_id", "task_id")]
    path = f"{base_path}/dags/{parts[0]}/runs/{parts[1]}/tasks/{parts[2]}"
    map_index = allocation.get("map_index")
    if map_index is not None and map_index >= 0:
        path += f"/mapped/{int(map_index)}"
    return path


def public_error(exc: BaseException) -> str:
    """What a page viewer may be told about a failed read: the cause, never the database's
    address, user or password (those go to the api-server log, redacted)."""
    if isinstance(exc, DatabaseUnavailable):
        return "the rtx database cannot be reached (details in the api-server log)"
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return "rtx's tables are missing: run `rtx db migrate`"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"the status query took longer than {STATEMENT_TIMEOUT_MS // 1000} s"
    if isinstance(exc, psycopg.OperationalError):
        return "the connection to the rtx database failed; retrying (details in the api-server log)"
    if isinstance(exc, ConfigError | TimeoutError):
        return redact_url(str(exc))
    return f"unexpected {type(exc).__name__} (details in the api-server log)"


def _read_page() -> str:
    try:
        return resources.files("runtime_executor.plugin").joinpath("page.html").read_text(encoding="utf-8")
    except FileNotFoundError:
        log.error("runtime_executor/plugin/page.html is missing from the rtx install (package data)")
        return (
            "<!doctype html><title>Executor Status</title><p>page.html is missing from the rtx install.</p>"
        )


def _csp(page: str) -> str:
    """Only this page's own inline script and style may run (a hash-pinned script: even a markup
    injection that slipped past the escaping could not execute), data from the same origin, and
    framing only by Airflow itself."""
    hashes = []
    start = 0
    while (open_at := page.find("<script>", start)) != -1:
        close_at = page.index("</script>", open_at)
        digest = hashlib.sha256(page[open_at + len("<script>") : close_at].encode()).digest()
        hashes.append(f"'sha256-{base64.b64encode(digest).decode()}'")
        start = close_at
    scripts = " ".join(hashes) or "'none'"
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        "style-src 'unsafe-inline'; "
        "img-src 'self' data:; "
        "connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'self'"
    )


class _StatusReader:
    """One lazily opened, reused connection per api-server process; reads are serialised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._connected = False  # the last read succeeded, so the connection is an old one

    def _settings(self) -> Settings:
        from airflow.configuration import conf

        return load_settings(airflow_url=conf.get("database", "sql_alchemy_conn"))

    def read(self) -> dict[str, Any]:
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise TimeoutError("the status reader is busy; try again")
        try:
            if self._db is None:
                self._db = Database(self._settings(), "rtx-status-page")
            # a kept connection may have died while idle (server restart, idle timeout): one retry
            # on a fresh connection, but not when a fresh one failed already
            was_connected, self._connected = self._connected, False
            try:
                data = self._read_once(self._db)
            except psycopg.OperationalError:
                if not was_connected:
                    raise
                data = self._read_once(self._db)
            self._connected = True
            return data
        finally:
            self._lock.release()

    def _read_once(self, db: Database) -> dict[str, Any]:
        try:
            with db.transaction() as gw:
                gw.read_only(STATEMENT_TIMEOUT_MS)
                return snapshot(gw)
        except Exception:
            # whatever went wrong (server restarted, schema missing), start clean next time
            db.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


def create_app() -> FastAPI:
    # Airflow's API modules only here: the helpers above stay importable without an api-server
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    from runtime_executor.plugin import base_url_path

    page = _read_page()
    page_headers = {
        "Content-Security-Policy": _csp(page),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    reader = _StatusReader()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        reader.close()

    app = FastAPI(
        title="rtx Executor Status", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def status_page() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/status", dependencies=[Depends(requires_access_view(access_view=AccessView.JOBS))])
    def status_json() -> JSONResponse:
        try:
            data = reader.read()
        except Exception as exc:  # noqa: BLE001 - reported to the caller without details, logged here
            log.warning("executor status unavailable: %s", redact_url(str(exc)))
            return JSONResponse(
                {"detail": f"executor status unavailable: {public_error(exc)}"},
                status_code=503,
                headers={"Cache-Control": "no-store"},
            )
        base_path = base_url_path("")
        for allocation in data["unassigned"] + [a for r in data["runners"] for a in r["allocations"]]:
            allocation["ui_path"] = ui_path(allocation, base_path)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    return app
