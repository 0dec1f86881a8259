"""Airflow's worker log server, run by ``rtx-runner serve --serve-logs`` the way a Celery worker runs it.

When a task ran on another host, the api-server reads its log from
``http://<ti.hostname>:<[logging] worker_log_server_port>/log/<relative log path>``
(``FileTaskHandler._read_from_logs_server``) with a JWT signed by ``[api] secret_key`` (audience
``task-instance-logs``, valid ``[webserver] log_request_clock_grace`` seconds). Airflow's server
(``airflow.utils.serve_logs``) checks that token and serves ``[logging] base_log_folder`` read-only.
So the runner host needs the same ``[api] secret_key`` as the api-server, and ``ti.hostname`` (what
the task reports, ``[core] hostname_callable``) must be a name the api-server can reach.

The runner process never imports Airflow, so the server runs in a child interpreter
(``python -m runner.log_server``), owned by the runner: started once the runner is registered,
restarted with backoff if it dies, stopped after the drain (so logs stay readable while tasks
finish), and killed by the kernel if the runner dies first (``PR_SET_PDEATHSIG``).

The child's state, as the runner's ``Loop`` ("log-server") sees it every POLL seconds:

    running --exited on its own--> waiting (1 s, doubling to 60 s; back to 1 s after 60 s up)
    waiting --delay over--> running (a spawn that fails is retried with the loop's backoff)
    any --stop()--> stopped (the loop first, so nothing is spawned after; then SIGTERM, SIGKILL)

The server's own blocking ``serve_forever`` runs in the child, under Airflow's code.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import structlog

from runner.task_entry import PRIVATE_ENV
from runtime_executor.loop import Loop

log = structlog.get_logger("rtx.runner")

MAX_RESTART_DELAY = 60.0
POLL = 1.0  # seconds between looks at the child


class LogServer:
    """The child process and a loop that restarts it if it exits on its own."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._delay = 1.0  # before the next restart
        self._restart_at: float | None = None  # set while waiting to restart
        self._loop = Loop("log-server", self._tick, POLL, max_backoff=MAX_RESTART_DELAY)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LogServer:
        self._spawn()
        self._loop.start()
        return self

    def _spawn(self) -> None:
        argv = [sys.executable, "-m", "runner.log_server", "--parent", str(os.getpid())]
        if self.port is not None:
            argv += ["--port", str(self.port)]
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        # stdout/stderr: the runner's own (journal or supervisor log)
        self._proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        self._started, self._restart_at = time.monotonic(), None
        log.info(
            "log server started", pid=self._proc.pid, port=self.port or "[logging] worker_log_server_port"
        )

    def _tick(self) -> None:
        now = time.monotonic()
        if self._restart_at is None:
            code = self._proc.poll() if self._proc is not None else None
            if code is None:
                return
            if now - self._started > MAX_RESTART_DELAY:
                self._delay = 1.0
            log.error("log server exited; restarting it", exit_code=code, retry_in=self._delay)
            self._restart_at, self._delay = now + self._delay, min(MAX_RESTART_DELAY, self._delay * 2)
        if now >= self._restart_at:
            self._spawn()  # an OSError: the loop logs it and retries with backoff

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.info("log server stopped")


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the runner (which forked us) dies; Linux only."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the runner died before the request took effect
        sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.log_server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=None, help="default: [logging] worker_log_server_port")
    parser.add_argument("--parent", type=int, default=None, help="pid of the runner that owns this server")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _die_with_parent(args.parent)
    from airflow.utils.serve_logs import serve_logs  # Airflow only in this child

    serve_logs(port=args.port)


if __name__ == "__main__":
    main()
