"""The Airflow plugin behind the "Executor Status" page (Browse → Executor Status).

Airflow imports every plugin in every component (api-server, scheduler, dag-processor,
triggerer, the CLI), so importing this module does nothing but define a class: no FastAPI app,
no configuration read, no database connection.

``fastapi_apps`` and ``external_views`` are computed on first *access* (and then cached). In
Airflow 3.3 only the api-server (``init_plugins`` → ``get_fastapi_plugins``) and the plugin
listings (``airflow plugins``, ``GET /api/v2/plugins``) read ``fastapi_apps``; ``external_views``
is read by the api-server's UI endpoints. So the app is built exactly where it is served, and
nowhere else, without guessing the component from ``sys.argv`` (edge3's approach, which breaks
as soon as the api-server is started some other way, e.g. under a different entry point or by a
process manager that rewrites argv).
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/runtime-executor"
URL_ROUTE = "executor-status"
PAGE_NAME = "Executor Status"


def base_url_path(path: str) -> str:
    """``path`` under the path part of ``[api] base_url`` (for an api-server behind a sub-path)."""
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="") or ""
    base_path = urlsplit(base_url).path if base_url.startswith(("http://", "https://")) else base_url
    return base_path.rstrip("/") + path


@functools.cache
def _fastapi_apps() -> list[dict[str, Any]]:
    from runtime_executor.plugin.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": PAGE_NAME}]


@functools.cache
def _external_views() -> list[dict[str, Any]]:
    return [
        {
            "name": PAGE_NAME,
            "href": base_url_path(f"{URL_PREFIX}/"),
            "icon": base_url_path(f"{URL_PREFIX}/icon.svg"),
            "destination": "nav",
            "category": "browse",
            "url_route": URL_ROUTE,
        }
    ]


class _Lazy:
    """A class attribute whose value (a list) is built by ``factory`` the first time it is read.

    Works on the class and on instances alike, and always returns the same list object, so
    Airflow's plugins manager can keep mutating it in place (it removes rejected views).
    """

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def __get__(self, obj: object, objtype: type | None = None) -> list[dict[str, Any]]:
        return self.factory()


class RuntimeExecutorPlugin(AirflowPlugin):
    name = "runtime_executor"
    fastapi_apps = _Lazy(_fastapi_apps)  # type: ignore[assignment]
    external_views = _Lazy(_external_views)  # type: ignore[assignment]
