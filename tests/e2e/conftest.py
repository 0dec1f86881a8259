"""A real Airflow 3.3 stack with rtx's allocator and two runners, shared by the tests of a module."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.airflow_stack import AirflowStack
from testing.pgcluster import create_database, drop_database, free_port
from tests.conftest import _with_db
from tests.support.daemons import Daemon

DAGS = Path(__file__).parent / "dags"


class Stack:
    def __init__(self, airflow: AirflowStack, log_dir: Path) -> None:
        self.airflow = airflow
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []

    def daemon(self, name: str, module: str, *args: str, **env: str) -> Daemon:
        import sys

        full_env = self.airflow.env()
        full_env.update(env)
        d = Daemon(name, [sys.executable, "-m", module, "serve", *args], full_env, self.log_dir)
        self.daemons.append(d)
        return d

    def logs(self) -> str:
        parts = [f"===== {d.name} =====\n{d.log()[-6000:]}" for d in self.daemons]
        parts += [
            f"===== {c} =====\n{self.airflow.component_log(c)[-6000:]}"
            for c in ("scheduler", "dag-processor")
        ]
        return "\n".join(parts)

    def stop(self) -> None:
        for d in reversed(self.daemons):
            if d.proc.poll() is None:
                d.stop()
        self.airflow.stop()


@contextlib.contextmanager
def airflow_stack(pg_admin_url: str, home: Path, dags_folder: Path, extra_env=None) -> Iterator[Stack]:
    """Airflow (database of its own, api-server, scheduler, dag-processor) and rtx's allocator; the
    caller adds its runners. Everything is stopped and the database dropped on exit."""
    name = f"rtx_e2e_{uuid.uuid4().hex[:10]}"
    create_database(pg_admin_url, name)
    airflow = AirflowStack(
        home, _with_db(pg_admin_url, name), port=free_port(), dags_folder=dags_folder, extra_env=extra_env
    )
    s = Stack(airflow, home)
    try:
        airflow.prepare()
        airflow.start()
        s.daemon("allocator", "allocator")
        yield s
    finally:
        s.stop()
        drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def stack(pg_admin_url, tmp_path_factory, request) -> Iterator[Stack]:
    """One stack per test module; a module may set ``STACK_ENV`` (extra Airflow/rtx settings)."""
    home = tmp_path_factory.mktemp("airflow")
    with airflow_stack(pg_admin_url, home, DAGS, getattr(request.module, "STACK_ENV", None)) as s:
        s.daemon(
            "runner-small",
            "runner",
            "--slots",
            "4",
            "--cpu",
            "2",
            "--memory",
            "2048",
            "--name",
            "runner-small",
        )
        s.daemon(
            "runner-large",
            "runner",
            "--slots",
            "8",
            "--cpu",
            "4",
            "--memory",
            "6144",
            "--name",
            "runner-large",
        )
        yield s
