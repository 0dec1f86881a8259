"""Warm task processes (*spares*), forked ahead of time from the runner's fork server, and reused.

The fork server (``multiprocessing`` "forkserver") imports the task module once (Airflow's task
supervisor), so each child starts warm. On top of that the runner keeps spares already forked and
blocked on a pipe: starting a task is one ``send`` of the workload down that pipe (microseconds).
The workload (which holds the task's token) travels over the pipe, never argv. A spare that has run
a task reports its exit code on the same pipe and goes back to the pool, as LocalExecutor's workers
call Airflow's ``supervise()`` once per workload: no fork, no copy-on-write faults, no exit per task.

A spare, as the runner and the spare itself (``runner.task_entry.wait_and_run``) see it::

    waiting --launch(task, last=False)--> running --task returned--> reporting (code, growth, clean)
       ^   \\                                                              |
       |    +--launch(task, last=True)--> running its last task --> exits with the task's code
       |                                                                   |
       +------- reused (the reaper's decision, ``finish``) <---------------+--> retired: the runner
                                                                                closes the pipe, the
                                                                                spare exits (EOF)

* Last task: the runner says so at launch (``tasks_per_process`` reached, or ``--isolation cgroup``).
  The spare then runs it exactly as a one-task process always did: its exit code is the process's,
  and the reaper learns it from the process exit (``exit_code``). ``tasks_per_process = 1`` is
  therefore the behaviour of one process per task.
* Waiting after a task, a spare holds the next task process already forked (runner.prestart), so
  Airflow's supervisor does not fork on the next task's start path; it is killed and reaped when the
  spare retires, and exits by itself if the spare dies.
* Report: after any other task the spare puts back what the task changed (``task_entry._Baseline``:
  ``os.environ`` as it was before the first task, so no token leaks into the next task; signal
  handlers and timers; process title; working directory; umask), kills and reaps any process the
  task left behind, then sends ``(exit code, RSS growth MB, clean)``. The reaper waits on that pipe as
  well as on the process's sentinel (runner.reaper).
* Reuse (``finish``): only a spare that reported, whose task was not stopped, that left nothing
  behind (``clean``), that has run fewer than ``tasks_per_process`` tasks and whose RSS grew less
  than ``MAX_GROWTH_MB`` since it was forked (a leak in code that runs in the spare itself, e.g. a
  callback or a test entry, cannot grow forever) goes back to the pool. Anything else is retired.

Failure cases:

* The runner dies: a waiting spare sees EOF on its pipe and exits; it never runs anything unasked.
  A spare running a task kills its whole tree (``task_entry._watch_runner``, started with its first
  task and alive for the spare's life).
* A task that is stopped (revoke, ``--enforce-memory``, drain timeout) or fenced: its spare is never
  reused. If it still reports, the runner SIGKILLs the spare's whole tree and retires it; if it died
  of the stop, its exit is the outcome, as before.
* A spare that crashed (killed, segfault) while running a task: EOF on its pipe and its sentinel; the
  reaper takes the process's exit code, as for a one-task process.
* An exit that raced a kill: the reaper decides "task ended" and ``stop`` signals a task under one
  lock (runner.reaper), and a spare returns to the pool only after that decision, so a stop or a
  fencing kill meant for a task that already reported never reaches the spare's next task. A report
  still in the pipe when a late SIGTERM killed the waiting spare is still read (the pipe keeps it);
  the task was stopped, so the spare is not reused either way.
* A reused spare that died while waiting (e.g. the OOM killer): ``launch`` sees its exit and takes
  another spare, or forks; a send to a spare that died since is retried once on a fresh fork.

Pool size: ``size`` (``--spare-processes``) is the least number of idle spares; the refill loop
forks new ones only while fewer are idle, and a spare back from a task counts. After a burst the pool
may hold up to ``size + slots`` idle spares (the runner's slots: the most it can run at once; so
every spare back from a task is kept), and the next burst of that size starts without a fork. Those beyond ``size`` that stayed idle for
``IDLE_RETIRE_S`` are retired, longest idle first. ``launch`` takes the most recently returned spare
(warm caches), and forks on demand when none is idle.

The pool is refilled by a ``Loop`` ("spares"): woken by every launch, and once a second besides; a
fork that fails is retried with the loop's backoff (a launch forks on demand meanwhile). The same
loop closes retired spares once they exited.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from dataclasses import dataclass

import structlog

from runner import task_entry
from runtime_executor.loop import Loop

log = structlog.get_logger("rtx.runner")

# multiprocessing is not thread-safe here: Process.start() polls every live child it knows (its
# _cleanup), and a child's exit code is read once from the fork server's pipe. Two threads polling
# the same child at once make one of them read EOF and report exit code 255. So every start holds
# PROCESS_LOCK, and each task process is taken off multiprocessing's list of children as soon as it
# has started: its exit code is then read by one thread only (the reaper while it runs a task, the
# pool while it is idle or retired), so the reaper never waits behind the forks of a burst of starts.
PROCESS_LOCK = threading.Lock()

MAX_GROWTH_MB = 256  # a spare whose RSS grew more than this since its fork is retired
IDLE_RETIRE_S = 60.0  # idle spares beyond --spare-processes are retired after this long unused
RETIRE_KILL_S = 10.0  # a retired spare still alive this long after its pipe closed is killed


def exit_code(process: multiprocessing.process.BaseProcess) -> int | None:
    """The exit code of a task process that has exited, else None (never waits)."""
    process.join(0)
    return process.exitcode


@dataclass(eq=False)
class Spare:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection | None  # the runner's end; None once closed
    tasks_run: int = 0  # tasks handed to it
    reporting: bool = False  # running a task it will report on ``conn`` (not its last)
    since: float = 0.0  # monotonic: idle since (in the pool), or retired since

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True)
class Report:
    """What a spare sends after a task that was not its last."""

    code: int
    growth_mb: int
    clean: bool  # it left no process behind


class SparePool:
    def __init__(self, size: int = 2, *, slots: int = 0, tasks_per_process: int = 1) -> None:
        self.size = size
        self.max_idle = size + slots  # every spare that can be running a task, and the spares
        self.tasks_per_process = max(1, tasks_per_process)
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(task_entry.preload_modules())
        self._idle: list[Spare] = []  # most recently returned last
        self._retiring: list[Spare] = []
        self._lock = threading.Lock()
        self._closed = False
        self.reused = 0  # tasks started in a spare that had run one before (tests, logs)
        self._refill = Loop("spares", self._fill, 1.0)
        # Only this process holds the writing end; spares and tasks see EOF when the runner dies.
        self._runner_alive_r, self._runner_alive_w = self._ctx.Pipe(duplex=False)

    def start(self) -> None:
        """Fork the first spares now: the fork server's imports happen here, not on the first task."""
        self._fill()
        self._refill.start()

    def _fork(self) -> Spare:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=task_entry.wait_and_run, args=(parent_conn, self._runner_alive_r), name="rtx-task-spare"
        )
        with PROCESS_LOCK:
            process.start()
            multiprocessing.process._children.discard(process)  # see PROCESS_LOCK
        parent_conn.close()  # the child's end; only the child uses it
        return Spare(process, child_conn, since=time.monotonic())

    def _fill(self) -> None:
        self._sweep()
        while not self._closed:
            with self._lock:
                if len(self._idle) >= self.size:
                    return
            spare = self._fork()
            with self._lock:
                self._idle.insert(0, spare)  # behind the warm ones launch() prefers

    def _sweep(self) -> None:
        """Retire idle extras unused for IDLE_RETIRE_S; close retired spares that have exited."""
        now = time.monotonic()
        with self._lock:
            extra = len(self._idle) - self.size
            stale = sorted((s for s in self._idle if now - s.since > IDLE_RETIRE_S), key=lambda s: s.since)
            stale = stale[: max(0, extra)]
            for spare in stale:
                self._idle.remove(spare)
            retiring, self._retiring = self._retiring, []
        for spare in stale:
            self.retire(spare)
        left = []
        for spare in retiring:
            if exit_code(spare.process) is not None:
                with contextlib.suppress(ValueError):
                    spare.process.close()
                continue
            if now - spare.since > RETIRE_KILL_S:
                task_entry.kill_tree(spare.pid, signal.SIGKILL)
            left.append(spare)
        with self._lock:
            self._retiring.extend(left)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def launch(
        self, entry: str, workload_json: str, env: dict[str, str], server: str | None, title: str
    ) -> Spare:
        """Hand one task to a spare (or a freshly forked process) and return it."""
        spare = self._take()
        while True:
            try:
                self._send(spare, entry, workload_json, env, server, title)
                break
            except OSError:
                self.retire(spare)
                if spare.tasks_run <= 1:
                    raise  # a fresh fork that cannot take a task: a failed start (runner.starts)
                spare = self._fork()  # a reused spare that died since it was taken: once more, fresh
        self._refill.wake()
        return spare

    def _take(self) -> Spare:
        while True:
            with self._lock:
                spare = self._idle.pop() if self._idle else None
            if spare is None:
                return self._fork()
            if exit_code(spare.process) is None:
                return spare
            self.retire(spare)  # died while idle

    def _send(
        self, spare: Spare, entry: str, workload_json: str, env: dict, server: str | None, title: str
    ) -> None:
        assert spare.conn is not None
        spare.tasks_run += 1
        last = spare.tasks_run >= self.tasks_per_process
        spare.conn.send((entry, workload_json, env, server, title, last))
        if spare.tasks_run > 1:
            self.reused += 1
        if last:
            spare.conn.close()  # it exits after this task: the reaper reads its exit code
            spare.conn = None
        spare.reporting = not last

    def report(self, spare: Spare) -> Report | None:
        """The reaper's side: read a report the spare's pipe has ready; None when the pipe is at EOF
        (the spare died: its exit code says how)."""
        assert spare.conn is not None
        try:
            code, growth_mb, clean = spare.conn.recv()
        except (EOFError, OSError):
            spare.conn.close()
            spare.conn = None
            spare.reporting = False
            return None
        spare.reporting = False
        return Report(int(code), int(growth_mb), bool(clean))

    def finish(self, spare: Spare, report: Report | None, *, stopped: bool) -> bool:
        """A task of this spare ended (the reaper decided so): reuse the spare or retire it. True when
        it went back to the pool."""
        if (
            report is not None
            and not stopped
            and report.clean
            and report.growth_mb <= MAX_GROWTH_MB
            and spare.tasks_run < self.tasks_per_process
            and spare.conn is not None
            and not self._closed
        ):
            with self._lock:
                if len(self._idle) < self.max_idle:
                    spare.since = time.monotonic()
                    self._idle.append(spare)
                    return True
        if report is not None and report.growth_mb > MAX_GROWTH_MB:
            log.info("retiring a task process that grew", pid=spare.pid, growth_mb=report.growth_mb)
        # alive after a stopped task: its whole tree dies, whatever the task left
        self.retire(spare, kill=stopped and report is not None)
        return False

    def retire(self, spare: Spare, *, kill: bool = False) -> None:
        """Take a spare out of use: EOF on its pipe makes it exit; closed once it has."""
        if kill:
            task_entry.kill_tree(spare.pid, signal.SIGKILL)
        if spare.conn is not None:
            spare.conn.close()
            spare.conn = None
        spare.reporting = False
        spare.since = time.monotonic()
        if exit_code(spare.process) is not None:
            with contextlib.suppress(ValueError):
                spare.process.close()
            return
        with self._lock:
            self._retiring.append(spare)

    def close(self) -> None:
        self._closed = True
        self._refill.stop()  # waits for a fork under way: no spare is added after the list is taken
        with self._lock:
            spares, self._idle = self._idle + self._retiring, []
            self._retiring = []
        for spare in spares:
            if spare.conn is not None:
                spare.conn.close()  # EOF: the spare exits without running anything
        for spare in spares:
            spare.process.join(5)
            if spare.process.is_alive():
                spare.process.kill()
                spare.process.join(5)
            with contextlib.suppress(ValueError):
                spare.process.close()
