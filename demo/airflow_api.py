"""Airflow's REST API as the demo's user (admin / admin), with timeouts meant for a busy laptop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from demo.config import LOGIN
from demo.progress import DemoError


def healthy(base_url: str) -> bool:
    """The api-server answers its health check."""
    try:
        return httpx.get(f"{base_url}/api/v2/monitor/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


class Api:
    """Logs in once (a JWT from ``/auth/token``), then each call carries the token."""

    def __init__(self, base_url: str, where: Path) -> None:
        self.base_url = base_url
        self.where = where  # the log an error points at
        self._headers: dict[str, str] | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a transport error or an error status is a DemoError naming the call."""
        try:
            if self._headers is None:
                login = httpx.post(
                    f"{self.base_url}/auth/token",
                    json={"username": LOGIN[0], "password": LOGIN[1]},
                    timeout=60,
                )
                login.raise_for_status()
                self._headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            response = httpx.request(
                method, f"{self.base_url}{path}", headers=self._headers, timeout=60, **kwargs
            )
            response.raise_for_status()
            return response
        except httpx.HTTPStatusError as exc:
            raise DemoError(
                f"{method} {path}: HTTP {exc.response.status_code} {exc.response.text[:200]}", self.where
            ) from None
        except httpx.HTTPError as exc:
            raise DemoError(f"{method} {path}: {type(exc).__name__} {exc}".rstrip(), self.where) from None

    def poll(self, path: str) -> Any:
        """GET for a polling loop: the JSON, or None when the call failed (try again later)."""
        try:
            return self.request("GET", path).json()
        except DemoError:
            return None

    # -- the calls the demo makes ----------------------------------------------------------------
    def dag(self, dag_id: str) -> Any:
        return self.poll(f"/api/v2/dags/{dag_id}")

    def import_errors(self) -> list[dict[str, Any]]:
        return (self.poll("/api/v2/importErrors") or {}).get("import_errors", [])

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str) -> str:
        """Start a run now; its run id."""
        response = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {}}
        )
        return response.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        return (self.poll(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}") or {}).get("state")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()[
            "task_instances"
        ]
