"""Warm task processes, forked ahead of time from the runner's fork server.

The fork server (``multiprocessing`` "forkserver") imports the task module once (Airflow's task
supervisor), so each child starts warm. On top of that the runner keeps a few *spare* children
already forked and blocked on a pipe: starting a task is then one ``send`` of the workload down
that pipe (microseconds), and a replacement spare is forked in the background. The workload (which
holds the task's token) travels over the pipe, never argv.

A spare whose runner dies sees EOF on its pipe and exits; it never runs anything unasked.

The pool is refilled by a ``Loop`` ("spares"): woken by every launch, and once a second besides; a
fork that fails is retried with the loop's backoff (a launch forks on demand meanwhile).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import threading
from dataclasses import dataclass

from runner import task_entry
from runtime_executor.loop import Loop

# multiprocessing is not thread-safe here: Process.start() polls every live child it knows (its
# _cleanup), and a child's exit code is read once from the fork server's pipe. Two threads polling
# the same child at once make one of them read EOF and report exit code 255. So every start holds
# PROCESS_LOCK, and each task process is taken off multiprocessing's list of children as soon as it
# has started: its exit code is then read by one thread only (the reaper, or launch() for a spare),
# so the reaper never waits behind the forks of a burst of starts.
PROCESS_LOCK = threading.Lock()


def exit_code(process: multiprocessing.process.BaseProcess) -> int | None:
    """The exit code of a task process that has exited, else None (never waits)."""
    process.join(0)
    return process.exitcode


@dataclass
class Spare:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection


class SparePool:
    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(task_entry.preload_modules())
        self._spares: list[Spare] = []
        self._lock = threading.Lock()
        self._closed = False
        self._refill = Loop("spares", self._fill, 1.0)
        # Only this process holds the writing end; spares and tasks see EOF when the runner dies.
        self._runner_alive_r, self._runner_alive_w = self._ctx.Pipe(duplex=False)

    def start(self) -> None:
        """Fork the first spares now: the fork server's imports happen here, not on the first task."""
        self._fill()
        self._refill.start()

    def _fork(self) -> Spare:
        parent_conn, child_conn = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=task_entry.wait_and_run, args=(parent_conn, self._runner_alive_r), name="rtx-task-spare"
        )
        with PROCESS_LOCK:
            process.start()
            multiprocessing.process._children.discard(process)  # see PROCESS_LOCK
        parent_conn.close()  # the child's end; only the child reads it
        return Spare(process, child_conn)

    def _fill(self) -> None:
        while not self._closed:
            with self._lock:
                if len(self._spares) >= self.size:
                    return
            spare = self._fork()
            with self._lock:
                self._spares.append(spare)

    def launch(self, entry: str, workload_json: str, env: dict[str, str], server: str | None, title: str):
        """Hand one task to a spare (or a freshly forked process) and return its process."""
        with self._lock:
            spare = self._spares.pop(0) if self._spares else None
        if spare is None or exit_code(spare.process) is not None:
            spare = self._fork()
        spare.conn.send((entry, workload_json, env, server, title))
        spare.conn.close()
        self._refill.wake()
        return spare.process

    def close(self) -> None:
        self._closed = True
        self._refill.stop()  # waits for a fork under way: no spare is added after the list is taken
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.conn.close()  # EOF: the spare exits without running anything
        for spare in spares:
            spare.process.join(5)
            if spare.process.is_alive():
                spare.process.kill()
            with contextlib.suppress(ValueError):
                spare.process.close()
