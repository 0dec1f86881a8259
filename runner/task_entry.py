"""What runs first in every task process the runner's fork server forks.

Kept free of Airflow imports so the runner's own process never loads Airflow; the fork server
preloads the task module (``runner.task_process``, which imports Airflow's supervisor) instead.

``RTX_TASK_ENTRY=module:function`` replaces the Airflow task with another function of the same
signature. It exists for rtx's own tests and benchmarks (a task that only records its start, sleeps
or exits with a given code); production runners leave it unset.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
from collections.abc import Callable

import psutil

DEFAULT_ENTRY = "runner.task_process:run"

# Never handed to a task: the runner's own database URL, and systemd's notify socket (the tasks
# are not the service).
PRIVATE_ENV = ("RTX_DATABASE_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

TaskFunction = Callable[[str, dict[str, str], "str | None", str], None]


def entry_point() -> str:
    return os.environ.get("RTX_TASK_ENTRY") or DEFAULT_ENTRY


def preload_modules() -> list[str]:
    return [entry_point().split(":", 1)[0]]


def resolve(entry: str) -> TaskFunction:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name or "run")


def wait_and_run(conn, runner_alive) -> None:
    """A spare process: wait for one task on ``conn``; exit quietly when the runner goes away."""
    try:
        entry, workload_json, env, server, proctitle = conn.recv()
    except (EOFError, OSError):
        return
    finally:
        conn.close()
    _watch_runner(runner_alive)
    run(entry, workload_json, env, server, proctitle)


def _watch_runner(runner_alive) -> None:
    """Kill this task's whole process tree when the runner process dies.

    ``runner_alive`` is the read end of a pipe whose only writer is the runner: EOF means the runner
    is gone (SIGKILL, crash). Its tasks must die with it, or they would keep running while the
    allocator declares them lost and Airflow retries them elsewhere: a task twice at once.
    Airflow's supervisor puts the task in a process group of its own, so the tree is walked, not
    just this process group.
    """

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            runner_alive.recv()
        kill_tree(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="rtx-runner-watch", daemon=True).start()


def kill_tree(pid: int, sig: signal.Signals) -> None:
    """Signal a process and every descendant (children first looked up, then signalled)."""
    try:
        root = psutil.Process(pid)
        victims = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)


def run(entry: str, workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    """Child entry point: own process group, clean environment, then the task function."""
    os.setsid()  # the runner signals the whole tree with killpg(pid)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in PRIVATE_ENV:
        os.environ.pop(name, None)
    os.environ.update(env)
    resolve(entry)(workload_json, env, server, proctitle)
