"""Real daemon processes for tests and benchmarks: started with subprocess, stopped with real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]  # the checkout (tests/ and bench/ live there)
FAKE_TASK = "tests.support.fake_task:run"


class Daemon:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        self.send(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the daemon (and, like a host going away, everything it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def daemon_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTX_", "AIRFLOW__"))}
    env.update(
        RTX_DATABASE_URL=db_url,
        RTX_LOG_FORMAT="json",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


class Daemons:
    """Starts daemons for one test and stops every one of them at the end."""

    def __init__(self, db_url: str, log_dir: Path) -> None:
        self.db_url = db_url
        self.log_dir = log_dir
        self.started: list[Daemon] = []

    def allocator(self, *args: str, name: str = "allocator", **env: str) -> Daemon:
        d = Daemon(
            name,
            [sys.executable, "-m", "allocator", "serve", *args],
            daemon_env(self.db_url, **env),
            self.log_dir,
        )
        self.started.append(d)
        return d

    def runner(self, *args: str, name: str = "runner", fake: bool = True, **env: str) -> Daemon:
        if fake:
            env.setdefault("RTX_TASK_ENTRY", FAKE_TASK)
        d = Daemon(
            name,
            [sys.executable, "-m", "runner", "serve", "--name", name, *args],
            daemon_env(self.db_url, **env),
            self.log_dir,
        )
        self.started.append(d)
        return d

    def stop_all(self) -> None:
        for d in reversed(self.started):
            if d.proc.poll() is None:
                d.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {d.name} =====\n{d.log()}" for d in self.started)


def wait_for(
    predicate: Callable[[], object], timeout: float = 30, interval: float = 0.05, what: str = ""
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def query(db_url: str, sql: str, params: dict | None = None) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql, params or {}).fetchall()
