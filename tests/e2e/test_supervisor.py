"""The shipped supervisor config runs rtx for a real Airflow stack, and a restart drains.

The real ``supervisord`` (from the ``supervisor`` wheel in the test extras) loads
``deploy/supervisor/rtx.conf`` adapted only by paths and the user (generated below by substitution
from the shipped file). The allocator and the runner come from supervisord, with their settings in env
files read by ``rtx-envexec``. ``supervisorctl restart`` on the runner while a task sleeps: the
drain keeps the task, which succeeds on its first try, and a new runner comes back.
"""

from __future__ import annotations

import getpass
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from testing.airflow_stack import AirflowStack
from testing.pgcluster import create_database, drop_database, free_port
from tests.conftest import _with_db
from tests.support.daemons import query, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "supervisor" / "rtx.conf"
DAGS = Path(__file__).parent / "dags"
VENV_BIN = Path(sys.executable).parent
RUNNER_PROGRAM = "rtx:rtx-runner-default"


def adapt(text: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        assert old in text, f"the shipped config no longer contains {old!r}: update this test"
        text = text.replace(old, new)
    return text


def write_env_file(path: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        assert not set(value) & set(" \t\"'\\$#"), f"{key}: keep env file values plain in this test"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


class Supervisor:
    def __init__(self, root: Path, airflow: AirflowStack) -> None:
        self.root = root
        etc, logs, lib, confd = (root / n for n in ("etc", "log", "lib", "conf.d"))
        for d in (etc, logs, lib, confd):
            d.mkdir(parents=True)
        self.logs = logs
        # the shipped program group, adapted by paths and the user only
        (confd / "rtx.conf").write_text(
            adapt(
                SHIPPED.read_text(),
                {
                    "/usr/local/bin/rtx-envexec": f"{sys.executable} {REPO}/deploy/supervisor/rtx-envexec",
                    "--user rtx": f"--user {getpass.getuser()}",
                    "/opt/rtx/venv/bin/": f"{VENV_BIN}/",
                    "/etc/rtx/": f"{etc}/",
                    "/var/log/rtx/": f"{logs}/",
                    "/var/lib/rtx": str(lib),
                },
            )
        )
        # the deployment's data: what an operator writes into /etc/rtx
        stack_env = airflow.env()
        write_env_file(
            etc / "rtx.env",
            {
                **{k: v for k, v in stack_env.items() if k == "AIRFLOW_HOME" or k.startswith("AIRFLOW__")},
                "RTX_DATABASE_URL": airflow.database_url,
                "RTX_LOG_FORMAT": "json",
            },
        )
        (etc / "runner-default.env").write_text(
            'RTX_RUNNER_ARGS="--slots 4 --cpu 2 --memory 2048 --queue default"\nRTX_DRAIN_TIMEOUT=60\n'
        )
        # supervisord's own configuration (the distribution's /etc/supervisor/supervisord.conf)
        self.conf = root / "supervisord.conf"
        self.conf.write_text(
            f"[unix_http_server]\nfile={root}/supervisor.sock\n\n"
            f"[supervisord]\nlogfile={root}/supervisord.log\npidfile={root}/supervisord.pid\n"
            f"childlogdir={logs}\nnodaemon=true\n\n"
            "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{root}/supervisor.sock\n\n"
            f"[include]\nfiles={confd}/*.conf\n"
        )
        # supervisord's environment holds no rtx or Airflow setting: they come from the env files
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RTX_", "AIRFLOW", "ALLOCATOR_"))}
        self._out = open(root / "supervisord.out", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-c", str(self.conf), "-n"],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def program_log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dump(self) -> str:
        parts = [
            f"===== {p.name} =====\n{p.read_text(errors='replace')[-6000:]}"
            for p in sorted(self.logs.glob("*.log"))
        ]
        parts.append(
            f"===== supervisord =====\n{(self.root / 'supervisord.log').read_text(errors='replace')[-3000:]}"
        )
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # supervisord stops its programs (the runner drains)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


@pytest.fixture
def supervised(pg_admin_url, tmp_path):
    name = f"rtx_e2e_{uuid.uuid4().hex[:10]}"
    create_database(pg_admin_url, name)
    airflow = AirflowStack(
        tmp_path / "airflow", _with_db(pg_admin_url, name), port=free_port(), dags_folder=DAGS
    )
    supervisor = None
    try:
        airflow.prepare()
        supervisor = Supervisor(tmp_path / "supervisor", airflow)  # starts while the api-server does
        airflow.start()
        yield airflow, supervisor
    finally:
        if supervisor is not None:
            supervisor.stop()
        airflow.stop()
        drop_database(pg_admin_url, name)


def runners(db_url: str, name: str) -> list[tuple[str, str]]:
    return query(
        db_url,
        "SELECT id::text, state FROM runtime_executor.runners WHERE name = %(n)s ORDER BY started_at",
        {"n": name},
    )


def test_supervisorctl_restart_drains_the_runner_and_keeps_the_task(supervised):
    airflow, supervisor = supervised
    db = airflow.database_url
    name = f"{platform.node()}-default"  # the shipped command's --name %(host_node_name)s-default
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    try:
        [(old_runner, _)] = wait_for(lambda: runners(db, name), timeout=60, interval=0.2, what="the runner")
        status = supervisor.ctl("status")
        assert "rtx:rtx-allocator" in status.stdout and "RUNNING" in status.stdout, status.stdout

        run_id = airflow.trigger("rtx_drain")
        wait_for(
            lambda: query(
                db,
                "SELECT 1 FROM runtime_executor.allocations WHERE dag_id = 'rtx_drain' AND run_id = %(r)s"
                " AND state = 'running'",
                {"r": run_id},
            ),
            timeout=90,
            interval=0.2,
            what="the task to run",
        )
        started = time.monotonic()
        timings["task running"] = started - t0
        restart = supervisor.ctl("restart", RUNNER_PROGRAM)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert (
            f"{RUNNER_PROGRAM}: stopped" in restart.stdout and f"{RUNNER_PROGRAM}: started" in restart.stdout
        )
        timings["restart"] = time.monotonic() - started
        assert timings["restart"] > 3  # the stop waited for the task (an 8 s sleep)

        assert airflow.wait_for_run("rtx_drain", run_id, timeout=120) == "success"
        ti = airflow.task_instances("rtx_drain", run_id)["sleeper"]
        assert (ti["state"], ti["try_number"]) == ("success", 1)
        [(allocation, runner_id, state, try_number)] = query(
            db,
            "SELECT id::text, runner_id::text, state, try_number FROM runtime_executor.allocations"
            " WHERE dag_id = 'rtx_drain' AND run_id = %(r)s",
            {"r": run_id},
        )
        assert (runner_id, state, try_number) == (old_runner, "succeeded", 1)
        moves = [
            r[0]
            for r in query(
                db,
                "SELECT to_state FROM runtime_executor.allocation_events WHERE allocation_id = %(a)s ORDER BY id",
                {"a": allocation},
            )
        ]
        assert moves.count("running") == 1 and "lost" not in moves and moves[-1] == "succeeded", moves

        # the runner came back: the old row stopped, a new one (same name, new id) is active
        rows = wait_for(
            lambda: (r := runners(db, name)) and len(r) == 2 and r, timeout=30, what="a new runner"
        )
        assert rows[0] == (old_runner, "stopped") and rows[1][1] == "active"
        log = supervisor.program_log("rtx-runner-default")
        assert "runner draining" in log and "task finished" in log and "runner stopped" in log
        timings["done"] = time.monotonic() - t0
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    except BaseException:
        print(supervisor.dump())
        print(airflow.component_log("scheduler")[-4000:])
        raise
