"""A real Airflow 3.3 stack (api-server, scheduler, dag-processor) with rtx as its executor.

Used by the end-to-end tests, the status-page browser test and ``make demo``. Every component is a
real process started with the same environment; the REST API is used the way a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

COMPONENTS = ("api-server", "scheduler", "dag-processor")
DEMO_USER = "admin"


def sqlalchemy_url(libpq_url: str) -> str:
    scheme, _, rest = libpq_url.partition("://")
    return f"postgresql+psycopg://{rest}"


class AirflowStack:
    def __init__(
        self,
        home: Path,
        database_url: str,
        *,
        port: int,
        dags_folder: Path,
        executor: str = "runtime_executor.RuntimeExecutor",
        all_admins: bool = True,
        password: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.database_url = database_url
        self.port = port
        self.dags_folder = Path(dags_folder).resolve()
        self.executor = executor
        self.all_admins = all_admins
        self.password = password or secrets.token_urlsafe(12)
        self.extra_env = extra_env or {}
        self.logs_dir = self.home / "process-logs"
        self.procs: dict[str, subprocess.Popen] = {}
        self._log_files: list[Any] = []
        secrets_file = self.home / "stack-secrets.json"
        if secrets_file.exists():
            saved = json.loads(secrets_file.read_text())
        else:
            self.home.mkdir(parents=True, exist_ok=True)
            saved = {"jwt": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32)}
            secrets_file.write_text(json.dumps(saved))
            secrets_file.chmod(0o600)
        self._jwt_secret, self._api_secret = saved["jwt"], saved["api"]
        self._token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        sa_url = sqlalchemy_url(self.database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sa_url,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=sa_url,
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__CORE__EXECUTOR=self.executor,
            AIRFLOW__CORE__PARALLELISM="256",
            AIRFLOW__API_AUTH__JWT_SECRET=self._jwt_secret,
            AIRFLOW__API__SECRET_KEY=self._api_secret,
            AIRFLOW__API__BASE_URL=self.base_url + "/",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=self.base_url + "/execution/",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=str(self.all_admins),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{DEMO_USER}:admin,viewer:viewer",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="3",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.home / "logs"),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # -- set-up -----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Folders, fixed passwords for the UI users, ``airflow db migrate`` and ``rtx db migrate``."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        passwords.write_text(json.dumps({DEMO_USER: self.password, "viewer": self.password}) + "\n")
        passwords.chmod(0o600)
        self.run("airflow", "db", "migrate", timeout=300)
        self.run(sys.executable, "-m", "runtime_executor", "db", "migrate", timeout=120)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        exe = argv[0] if os.path.isabs(argv[0]) else str(Path(sys.executable).parent / argv[0])
        result = subprocess.run(
            [exe, *argv[1:]], env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=self.home
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def start(self, components: tuple[str, ...] = COMPONENTS) -> None:
        for component in components:
            self.start_component(component)
        if "api-server" in components:
            self.wait_healthy()
            self.warm_execution_api()

    def start_component(self, component: str) -> subprocess.Popen:
        log = open(self.logs_dir / f"{component}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files.append(log)
        args = [component] + (["--port", str(self.port)] if component == "api-server" else [])
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
            start_new_session=True,
        )
        self.procs[component] = proc
        return proc

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            proc = self.procs.get("api-server")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"api-server exited with {proc.returncode}:\n{self.component_log('api-server')[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"api-server not healthy after {timeout}s:\n{self.component_log('api-server')[-4000:]}"
                )
            time.sleep(0.5)

    def warm_execution_api(self, timeout: float = 120) -> None:
        """Answer one Execution API request before any task makes one.

        The api-server builds the Execution API's versioned routers (Cadwyn) on the first request
        under ``/execution``: 4.5-5.2 s on this 2-core machine (py-spy: ``Cadwyn._cadwyn_initialize``),
        which a long-running deployment pays once and the first task after a fresh start would pay
        here, charged to whatever runs first (a benchmark's first workload, a test's first task).
        """
        response = httpx.get(f"{self.base_url}/execution/health", timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"execution API health: HTTP {response.status_code}: {response.text[:500]}")

    def component_log(self, component: str) -> str:
        path = self.logs_dir / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_component(self, component: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(component, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for component in list(self.procs):
            self.stop_component(component)
        for log in self._log_files:
            log.close()
        self._log_files.clear()

    # -- REST API ---------------------------------------------------------------------------------
    def token(self, username: str = DEMO_USER) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": self.password}, timeout=10
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if not self.all_admins or self._token is not None:
            if self._token is None:
                self._token = self.token()
            headers.setdefault("Authorization", f"Bearer {self._token}")
        response = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)
        if response.status_code == 401 and self.all_admins and self._token is None:
            # Airflow 3.1 wants a token even when everyone is admin, and hands one out without credentials
            token = httpx.get(f"{self.base_url}/auth/token", timeout=10)
            token.raise_for_status()
            self._token = token.json()["access_token"]
            return self.api(method, path, headers=headers, **kwargs)
        return response

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.api("GET", f"/api/v2/dags/{dag_id}").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"DAG {dag_id} not parsed after {timeout}s:\n{self.component_log('dag-processor')[-4000:]}"
                )
            time.sleep(0.5)

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.wait_for_dag(dag_id)
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            if state in ("success", "failed"):
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {dag_id}/{run_id} still {state} after {timeout}s")
            time.sleep(0.5)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return {ti["task_id"]: ti for ti in response.json()["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        response = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        return json.dumps(response.json())
