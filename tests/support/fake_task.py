"""A task function for runner tests without Airflow (``RTX_TASK_ENTRY=tests.support.fake_task:run``).

The workload JSON says what to do: ``{"sleep": 1.5, "exit": 0, "record": "/path/file"}``
(``env_dump`` / ``proc_env_dump``: write ``os.environ`` / ``/proc/self/environ`` there as JSON;
``"term_grace": 60``: on SIGTERM record ``term`` and carry on that long, as a task whose clean-up
is slow, so that only the runner's SIGKILL stops it; ``"busy": 3, "busy_procs": 2``: that many
processes spin on the CPU for that long; ``"orphan_mb": 100, "orphan_pid": "/path"``: leave behind a
double-forked process, outside the task's process tree, that holds that much memory for a minute and
writes its pid there; ``"set_env": {"NAME": "value"}``: set those in ``os.environ``; ``"leak_mb": 300``:
keep that much memory in the process after the task returned, a leak; ``"leave_child": "/path"``: leave a
child process behind, still in the task's tree, and write its pid there). Each start
appends one line ``start <allocation> <runner> <pid> <unix time>`` (and ``end ...`` on a normal
exit) to ``record``, so tests can prove every task ran once and never twice at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _record(path: str | None, what: str) -> None:
    if not path:
        return
    line = f"{what} {os.environ.get('RTX_ALLOCATION_ID')} {os.environ.get('RTX_RUNNER_ID')} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _orphan(mb: int, pid_file: str | None) -> None:
    """A daemon the task forgets: forked twice, so init (not the task) is its parent."""
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    ballast = bytearray(mb * 2**20)  # noqa: F841 - held until killed
    if pid_file:
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
    time.sleep(60)
    os._exit(0)


def _spin(seconds: float, procs: int) -> None:
    """Busy-loop in ``procs`` processes (this one and procs - 1 forks) for ``seconds``."""
    children = []
    for _ in range(procs - 1):
        pid = os.fork()
        if pid == 0:
            _spin(seconds, 1)
            os._exit(0)
        children.append(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    for pid in children:
        os.waitpid(pid, 0)


_LEAKED: list[bytearray] = []  # what "leak_mb" keeps: lives as long as the process


def run(workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    spec = json.loads(workload_json or "{}")
    if spec.get("term_grace") is not None:

        def on_term(_signum, _frame) -> None:
            _record(spec.get("record"), "term")
            time.sleep(float(spec["term_grace"]))
            _record(spec.get("record"), "end")
            sys.exit(143)

        signal.signal(signal.SIGTERM, on_term)
    _record(spec.get("record"), "start")
    os.environ.update(spec.get("set_env") or {})
    if spec.get("leak_mb"):
        _LEAKED.append(bytearray(b"x" * (int(spec["leak_mb"]) * 2**20)))  # touched: resident
    if spec.get("leave_child"):
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        with open(spec["leave_child"], "w") as f:
            f.write(str(child))
    if spec.get("env_dump"):
        with open(spec["env_dump"], "w") as f:
            json.dump(dict(os.environ), f)
    if spec.get("proc_env_dump"):  # what the process was started with, not what Python shows
        with open("/proc/self/environ", "rb") as src:
            started_with = dict(e.decode().partition("=")[::2] for e in src.read().split(b"\0") if e)
        with open(spec["proc_env_dump"], "w") as f:
            json.dump(started_with, f)
    time.sleep(float(spec.get("sleep", 0)))
    if spec.get("orphan_mb"):
        _orphan(int(spec["orphan_mb"]), spec.get("orphan_pid"))
    if spec.get("busy"):
        _spin(float(spec["busy"]), int(spec.get("busy_procs", 1)))
    if spec.get("allocate_mb"):
        ballast = bytearray(int(spec["allocate_mb"]) * 2**20)  # noqa: F841 - held until exit
        time.sleep(float(spec.get("hold", 0)))
    _record(spec.get("record"), "end")
    sys.exit(int(spec.get("exit", 0)))
