"""``rtx-runner serve --serve-logs``: the api-server reads task logs from the runner's log server.

The runner writes task logs to a folder the api-server cannot see (its own
``AIRFLOW__LOGGING__BASE_LOG_FOLDER``, as on another host). The REST API still returns the log:
Airflow's api-server fetches it from ``http://<ti.hostname>:<worker_log_server_port>/log/...`` with
a JWT signed by the shared ``[api] secret_key``, and the runner's child log server answers.
"""

from __future__ import annotations

import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from testing.airflow_stack import AirflowStack
from testing.pgcluster import create_database, drop_database, free_port
from tests.conftest import _with_db
from tests.support.daemons import Daemon, query, wait_for

pytestmark = pytest.mark.e2e

DAGS = Path(__file__).parent / "dags"


class LogStack:
    def __init__(self, airflow: AirflowStack, root: Path, log_port: int) -> None:
        self.airflow = airflow
        self.root = root
        self.log_port = log_port
        self.runner_logs = root / "runner-task-logs"  # only the runner's environment names it
        self.daemons: list[Daemon] = []

    def daemon(self, name: str, module: str, *args: str, **env: str) -> Daemon:
        full_env = self.airflow.env()
        full_env.update(env)
        d = Daemon(name, [sys.executable, "-m", module, "serve", *args], full_env, self.root)
        self.daemons.append(d)
        return d

    def runner(self, name: str) -> Daemon:
        return self.daemon(
            name,
            "runner",
            "--serve-logs",
            "--name",
            name,
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.runner_logs),
            # ti.hostname: what the api-server connects to ("127.0.0.1" here, whatever the host is named)
            AIRFLOW__CORE__HOSTNAME_CALLABLE="airflow.utils.net.get_host_ip_address",
        )

    def log_server_of(self, runner: Daemon) -> psutil.Process:
        def find():
            try:
                children = psutil.Process(runner.pid).children()
            except psutil.NoSuchProcess:
                return None
            return next((c for c in children if "runner.log_server" in " ".join(c.cmdline())), None)

        return wait_for(find, timeout=30, interval=0.1, what="the runner's log server process")

    def wait_listening(self, timeout: float = 60) -> None:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.log_port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, timeout=timeout, interval=0.2, what=f"a log server on port {self.log_port}")

    def logs(self) -> str:
        parts = [f"===== {d.name} =====\n{d.log()[-6000:]}" for d in self.daemons]
        parts += [
            f"===== {c} =====\n{self.airflow.component_log(c)[-4000:]}" for c in ("api-server", "scheduler")
        ]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def log_stack(pg_admin_url, tmp_path_factory) -> Iterator[LogStack]:
    name = f"rtx_e2e_{uuid.uuid4().hex[:10]}"
    create_database(pg_admin_url, name)
    home = tmp_path_factory.mktemp("airflow")
    log_port = free_port()
    airflow = AirflowStack(
        home,
        _with_db(pg_admin_url, name),
        port=free_port(),
        dags_folder=DAGS,
        extra_env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port)},  # every component
    )
    stack = LogStack(airflow, home, log_port)
    try:
        airflow.prepare()
        stack.daemon("allocator", "allocator")
        airflow.start()
        yield stack
    finally:
        for d in reversed(stack.daemons):
            if d.proc.poll() is None:
                d.stop()
        airflow.stop()
        drop_database(pg_admin_url, name)


def test_api_server_reads_the_task_log_through_the_runners_log_server(log_stack):
    airflow = log_stack.airflow
    runner = log_stack.runner("runner-serving-logs")
    server = log_stack.log_server_of(runner)
    log_stack.wait_listening()
    try:
        # it is Airflow's log server: nothing without the api-server's signed token
        assert httpx.get(f"http://127.0.0.1:{log_stack.log_port}/log/x.log", timeout=10).status_code == 403

        run_id = airflow.trigger("rtx_served_log")
        assert airflow.wait_for_run("rtx_served_log", run_id, timeout=180) == "success"
        ti = airflow.task_instances("rtx_served_log", run_id)["hello"]
        assert ti["hostname"] == "127.0.0.1"

        relative = f"dag_id=rtx_served_log/run_id={run_id}/task_id=hello/attempt=1.log"
        assert (log_stack.runner_logs / relative).is_file()
        assert not (airflow.home / "logs" / relative).exists()  # the api-server's folder never had it

        text = airflow.task_log("rtx_served_log", run_id, "hello")
        assert "served-log-marker" in text
        # the api-server names where the text came from: the log server at ti.hostname
        assert f"http://127.0.0.1:{log_stack.log_port}/log/{relative}" in text

        # the connection budget of docs/scaling.md, counted on the server (the log server has none)
        budget = dict(
            query(
                airflow.database_url,
                "SELECT CASE WHEN application_name LIKE 'rtx-allocator@%%' THEN 'allocator'"
                " WHEN application_name LIKE 'rtx-runner:%%' THEN 'runner'"
                " WHEN application_name LIKE 'rtx-executor:%%' THEN 'executor' ELSE 'other' END, count(*)"
                " FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'rtx%%'"
                " GROUP BY 1",
            )
        )
        assert budget.get("allocator") == 4  # placement, upkeep, prune, listener (no --metrics-port)
        assert budget.get("runner") == 2  # work (starts, outcomes, usage, drain), heartbeat (+ LISTEN)
        assert budget.get("executor") == 1  # the shim in the scheduler
        assert "other" not in budget
    except BaseException:
        print(log_stack.logs())
        raise

    # stopped with the runner
    assert runner.stop() == 0
    wait_for(lambda: not server.is_running(), timeout=10, what="the log server to stop")
    assert "log server stopped" in runner.log()


def test_log_server_dies_with_a_killed_runner(log_stack):
    runner = log_stack.runner("runner-killed")
    server = log_stack.log_server_of(runner)
    log_stack.wait_listening()
    runner.send(signal.SIGKILL)  # the runner alone, not its process group
    runner.proc.wait(10)
    wait_for(
        lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE,
        timeout=15,
        what="the orphaned log server to exit",
    )
