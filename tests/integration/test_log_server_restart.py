"""The runner's log server child (``--serve-logs``): killed, it is restarted by its loop with a
doubling delay; stopped, it leaves no process behind. A real ``python -m runner.log_server`` (Airflow's
own server) on a free port; no database."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from runner.log_server import LogServer
from testing.daemons import wait_for
from testing.pgcluster import free_port

pytest.importorskip("airflow.utils.serve_logs", reason="the log server child runs Airflow's serve_logs")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _kill_and_wait_for_a_new_one(server: LogServer, port: int) -> float:
    """SIGKILL the child; seconds until a new child listens."""
    old = server.pid
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: server.pid != old and _listening(port), timeout=60, interval=0.1, what="a new log server"
    )
    return time.monotonic() - killed


def test_a_killed_log_server_is_restarted_with_a_doubling_delay_and_stop_leaves_none(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    port = free_port()
    server = LogServer(port).start()
    try:
        wait_for(lambda: _listening(port), timeout=60, interval=0.1, what="the log server")
        first = _kill_and_wait_for_a_new_one(server, port)
        second = _kill_and_wait_for_a_new_one(server, port)  # within 60 s of its start: the delay doubles
        assert 1.0 <= first < 55
        assert 2.0 <= second < 55
        last = psutil.Process(server.pid)
    finally:
        server.stop()
    assert not last.is_running() or last.status() == psutil.STATUS_ZOMBIE
    assert not _listening(port)
