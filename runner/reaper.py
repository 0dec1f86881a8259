"""The reaper: task exits, stops with their kill grace, and fencing's kills. No database here.

A task, as the reaper sees it (it runs in a spare process, runner.spares):

    running --stop(reason)--> stopping (SIGTERM sent) --kill_grace passed--> SIGKILL of its tree
       |                          |
       +--------------------------+--ended--> outcome queued (runner.outcomes), handle removed,
                                              spare reused or retired (SparePool.finish)

* A task has *ended* when its spare reports the task's exit code on its pipe (a spare that lives on),
  or when the spare process exited (its last task, or it crashed: the exit code is the process's). The
  reaper waits on both. EOF on the pipe without a report means the spare died: the process's exit
  code follows on its sentinel. A stopped task's spare is never reused (runner.spares).
* "Ended" and ``stop`` are decided under one lock, and a handle once ended is never signalled: the
  spare of a task that reported may already run the next task, which a late stop must not hit.

* ``stop`` sends SIGTERM to the task process (Airflow's supervisor forwards it to the task for a
  graceful stop) once and records why; the reason prefixes the outcome's. Who stops a task: a
  revoke, ``--enforce-memory``, a drain timeout, fencing.
* A stopped task still alive ``kill_grace`` after its SIGTERM has its whole tree SIGKILLed, whatever
  process groups it made.
* Fencing (runner.lease): while tasks run, every task is stopped at the lease's ``term_at()`` and its
  tree SIGKILLed at ``kill_at()``, so a runner that cannot renew its lease has killed its tasks
  before the database can call the lease expired.
* An exit is turned into (state, reason) by ``describe_exit``: the exit code, the signal that killed
  it, the stop reason, the error line the task left, and "likely out of memory" where the evidence
  says so. With ``--isolation cgroup`` the exited task's cgroup is released first (runner.cgroups),
  and the kernel's word that it OOM-killed the task is the reason, written to the task's log too.

The reaper waits on every task's sentinel and on a wake-up pipe (a new task, a stop), at most until
the next stop or fencing deadline, so no deadline is missed by more than the wake-up itself. Known
limit: a runner *process* frozen (SIGSTOP) past its lease cannot fence while frozen; its tasks die
when it resumes (the deadlines have passed) or dies (the tasks see EOF on the runner's pipe).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from runner import task_entry
from runner.lease import Lease
from runner.outcomes import Outcome, OutcomeQueue
from runner.spares import Report, SparePool, exit_code
from runner.tasks import RunningTasks, TaskHandle
from runner.usage import append_task_log, oom_kills
from runtime_executor.loop import Loop
from runtime_executor.settings import Settings

if TYPE_CHECKING:
    from runner.cgroups import Isolation
    from runner.metrics import RunnerMetrics

log = structlog.get_logger("rtx.runner")

FENCING = "runner could not renew its lease; stopping its tasks before it expires so they never run twice"


def describe_exit(
    code: int | None,
    stop_reason: str | None,
    *,
    peak_rss_mb: int | None = None,
    memory_mb: int = 0,
    oom_killed: bool = False,
    error: str | None = None,
    oom: str | None = None,
) -> tuple[str, str | None]:
    """(state, reason) for a task process's exit code (negative = killed by that signal).

    ``error`` is the last error line the task process left (``task_entry.take_error``), if any.
    ``oom`` is the kernel's word that it OOM-killed the task's own cgroup (``--isolation cgroup``): it
    replaces the exit detail, and no guess is needed.

    A task the runner did not stop that died of SIGKILL with its peak memory at or over its
    reservation, or any failure while the kernel's OOM killer struck the runner's cgroup
    (``oom_killed``), is said to have likely run out of memory."""
    if code == 0 and stop_reason is None:
        return "succeeded", None
    if code is None:
        detail = "task process vanished"
    elif code < 0:
        detail = f"task process killed by signal {signal.Signals(-code).name}"
    else:
        detail = f"task process exited with code {code}"
    if error:
        detail += f": {error}"
    if oom:
        detail = oom
    elif stop_reason is None:
        peak = f"peak memory {peak_rss_mb} MB" if peak_rss_mb is not None else ""
        if code == -signal.SIGKILL and memory_mb > 0 and peak_rss_mb is not None and peak_rss_mb >= memory_mb:
            detail += f" (likely out of memory: {peak}, reservation {memory_mb} MB)"
        elif oom_killed:
            detail += " (likely out of memory: the kernel's OOM killer ran" + (f"; {peak})" if peak else ")")
    return "failed", f"{stop_reason}: {detail}" if stop_reason else detail


class Reaper:
    def __init__(
        self,
        settings: Settings,
        lease: Lease,
        tasks: RunningTasks,
        outcomes: OutcomeQueue,
        on_exit: Callable[[], None],
        spares: SparePool,
        isolation: Isolation | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._spares = spares
        self._lock = threading.Lock()  # "ended" against stop(): see the module's note
        self._isolation = isolation
        self._metrics = metrics  # counts OOM kills (--isolation cgroup)
        self._lease = lease
        self._tasks = tasks
        self._outcomes = outcomes
        self._on_exit = on_exit  # an outcome is queued: wake whoever writes it
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # interval 0: the tick itself waits (on the sentinels and the pipe), never the loop
        self.loop = Loop("reaper", self.tick, 0.0)

    def start(self) -> None:
        self.loop.start()

    def stop_loop(self) -> None:
        self.loop.stop()  # a tick waits at most 0.5 s

    def wake(self) -> None:
        """Look again now: a task was added or stopped (its deadline may be the nearest)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def tick(self) -> bool:
        waitables: dict[object, TaskHandle] = {}
        for h in self._tasks.handles():
            waitables[h.spare.process.sentinel] = h
            if h.spare.reporting and h.spare.conn is not None:
                waitables[h.spare.conn] = h
        ready = multiprocessing.connection.wait([*waitables, self._wake_r], timeout=self._timeout())
        ended = False
        for obj in ready:
            if obj == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            handle = waitables[obj]
            if not handle.ended:  # its sentinel and its pipe may both be ready
                ended |= self._check(handle)
        if ended:
            self._on_exit()
        now = time.monotonic()
        # Invariant: a task of a runner that cannot renew its lease is dead before the database can
        # call that lease expired. valid_until is never later than the database's expiry, so
        # SIGKILL of the whole tree FENCE_MARGIN before it, after SIGTERM kill_grace earlier.
        kill_at = self._lease.kill_at()
        if len(self._tasks) and now >= self._lease.term_at():
            self.stop_all(FENCING)
        for handle in self._tasks.handles():
            if handle.term_sent_at is not None and (
                now - handle.term_sent_at > self.settings.kill_grace or now >= kill_at
            ):
                with self._lock:
                    if not handle.ended:
                        signal_group(handle.pid, signal.SIGKILL)
        return True

    def _check(self, handle: TaskHandle) -> bool:
        """Has this task ended (a report on its spare's pipe, or the spare's exit)? Ends it if so."""
        spare = handle.spare
        if spare.reporting and spare.conn is not None and spare.conn.poll():
            report = self._spares.report(spare)  # None: EOF, the spare died; its exit code follows
            if report is not None:
                self._end(handle, report.code, report)
                return True
        code = exit_code(spare.process)
        if code is None:
            return False  # EOF came before the exit code: its sentinel wakes us again
        self._end(handle, code, None)
        return True

    def _end(self, handle: TaskHandle, code: int | None, report: Report | None) -> None:
        with self._lock:
            handle.ended = True  # from here on, stop() leaves it (and its spare) alone
        oom = self._release_cgroup(handle, code)
        state, reason = describe_exit(
            code,
            handle.stop_reason,
            peak_rss_mb=handle.peak_rss_mb,
            memory_mb=handle.memory_mb,
            oom_killed=_oom_killed_since(handle, code),
            error=task_entry.take_error(handle.allocation_id),
            oom=oom,
        )
        if oom and handle.log_path:  # where its owner looks: the task's own log
            append_task_log(handle.log_path, "error", f"rtx: {reason}")
        if oom and self._metrics is not None:
            self._metrics.memory_exceeded.labels(self._metrics.runner, "oom_killed").inc()
        # the spare back in the pool before the outcome frees the slot: the next task may take it
        self._spares.finish(handle.spare, report, stopped=handle.stop_reason is not None)
        self._outcomes.append(Outcome(handle.allocation_id, handle.runner_id, state, code, reason))
        self._tasks.remove(handle.allocation_id)

    def _release_cgroup(self, handle: TaskHandle, code: int | None) -> str | None:
        """Remove an exited task's cgroup (killing what it left); its OOM reason if the kernel killed it."""
        if self._isolation is None:
            return None
        self._isolation.sweep_pending()  # cgroups a still-dying process kept busy at an earlier exit
        if handle.cgroup is None:
            return None
        stats, oom = self._isolation.finish(handle.cgroup, failed=code != 0 or handle.stop_reason is not None)
        if stats is not None and stats.peak_bytes is not None:
            handle.peak_rss_mb = max(handle.peak_rss_mb or 0, stats.peak_mb)
        return oom

    def _timeout(self) -> float:
        """Wait for exits at most until the next stop or fencing deadline (0.5 s when none is near)."""
        now, grace = time.monotonic(), self.settings.kill_grace
        handles = self._tasks.handles()
        deadlines = [h.term_sent_at + grace for h in handles if h.term_sent_at is not None]
        if handles:
            deadlines += [self._lease.term_at(), self._lease.kill_at()]
        return min([0.5, *(d - now for d in deadlines if d > now)])

    def stop(self, allocation_id: str, reason: str) -> None:
        """SIGTERM a task once, with the reason its outcome will give; the tick escalates to SIGKILL."""
        with self._lock:
            handle = self._tasks.get(allocation_id)
            if handle is None or handle.ended or handle.term_sent_at is not None:
                return
            handle.stop_reason = reason
            handle.term_sent_at = time.monotonic()
            signal_group(handle.pid, signal.SIGTERM)
        log.warning("stopping task", allocation_id=allocation_id, runner_id=handle.runner_id, reason=reason)
        self.wake()

    def stop_all(self, reason: str) -> None:
        for allocation_id in self._tasks.ids():
            self.stop(allocation_id, reason)


def _oom_killed_since(handle: TaskHandle, code: int | None) -> bool:
    """Did the kernel's OOM killer strike the runner's cgroup while a failed task ran?"""
    if code == 0 or handle.oom_kills_at_start is None:
        return False
    now = oom_kills()
    return now is not None and now > handle.oom_kills_at_start


def signal_group(pid: int | None, sig: signal.Signals) -> None:
    """SIGTERM goes to the task process (Airflow's supervisor forwards it to the task for a graceful
    stop); SIGKILL goes to the whole tree, whatever process groups it made."""
    if pid is None:
        return
    if sig == signal.SIGKILL:
        task_entry.kill_tree(pid, sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the task process leads its own group (setpgid in the child)
