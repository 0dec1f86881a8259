"""rtx-runner: registers, heartbeats, runs what the allocator assigned to it, reports outcomes.

Lease and fencing
-----------------
The runner holds a lease: ``runners.lease_expires_at``, renewed by every heartbeat to
``now() + lease_timeout`` on the database clock. Locally it keeps ``lease_valid_until`` =
(monotonic time the heartbeat was *sent*) + lease_timeout, which is never later than the database's
view. From that:

* it starts a task only while ``lease_valid_until`` is more than one heartbeat interval away, and
  never once fencing has begun;
* fencing completes before the database can declare the lease expired: rescue marks the work lost
  once ``lease_expires_at`` passes, and Airflow (``retry_delay=0``) may start the retry at once, so
  the old process must be dead by then. A runner that cannot renew its lease sends SIGTERM at
  ``lease_valid_until - kill_grace - FENCE_MARGIN`` and SIGKILLs every task's whole tree at
  ``lease_valid_until - FENCE_MARGIN``; the reaper wakes for those deadlines. Settings are checked
  (``validate_fencing``) so that a lease renewed on time never comes that close;
* a heartbeat that finds its row no longer active/draining means it was declared lost: it kills its
  tasks and registers again under a fresh id.

Every allocation write is guarded by ``runner_id = me`` and the state it comes from, so a runner
presumed dead can never overwrite a rescue.

States of a runner row: active -> draining -> stopped, and active | draining -> lost (rescue).

Outcomes
--------
A task's exit is queued in memory and written by the work loop; while the database is away the
queue keeps it and the loop retries with backoff, so nothing is lost by an outage.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import psutil
import structlog

from runner import task_entry
from runner.cgroups import Isolation, TaskCgroup
from runner.cgroups.isolation import task_env
from runner.spares import SparePool, exit_code
from runner.usage import UsageMonitor, append_task_log, log_path_of, oom_kills
from runtime_executor.db.connection import Database
from runtime_executor.loop import Listener, Loop
from runtime_executor.metrics import RunnerMetrics
from runtime_executor.settings import FENCE_MARGIN, Settings, validate_fencing

log = structlog.get_logger("rtx.runner")


@dataclass(frozen=True)
class Capacity:
    slots: int
    cpu: float
    memory_mb: int


@dataclass
class TaskHandle:
    allocation_id: str
    runner_id: str
    label: str
    process: multiprocessing.process.BaseProcess
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None
    term_sent_at: float | None = None
    pid: int | None = None  # kept apart: the reaper closes ``process`` as soon as it exits
    # what it reserved, and what the usage loop (runner.usage) saw it use
    slots: int = 1
    cpu: float = 0.0
    memory_mb: int = 0
    log_path: str | None = None  # its Airflow task log, relative to [logging] base_log_folder
    rss_mb: int | None = None
    peak_rss_mb: int | None = None
    memory_warned: bool = False
    oom_kills_at_start: int | None = None  # the cgroup's OOM-kill count when it started
    cgroup: TaskCgroup | None = None  # its own cgroup (--isolation cgroup)


@dataclass(frozen=True)
class Outcome:
    allocation_id: str
    runner_id: str
    state: str
    exit_code: int | None
    reason: str | None
    # The start failed before any of the task's code ran (no task process exists): the row goes back
    # for placement (retry_start.sql) instead of failing, up to start_retries times.
    start_failed: bool = False


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


class Runner:
    def __init__(
        self,
        settings: Settings,
        capacity: Capacity,
        queues: list[str],
        *,
        name: str | None = None,
        server_url: str | None = None,
        spare_processes: int = 2,
        isolation: Isolation | None = None,
    ) -> None:
        validate_fencing(settings)
        self.settings = settings
        self.capacity = capacity
        self.queues = queues
        self.hostname = socket.gethostname()
        self.name = name or f"{self.hostname}:{os.getpid()}"
        self.server_url = server_url
        self.runner_id = str(uuid.uuid4())
        self.draining = False
        self.stopping = False
        self.lease_valid_until = 0.0
        self._last_orphan_check = time.monotonic()
        self._tasks: dict[str, TaskHandle] = {}
        self._tasks_lock = threading.Lock()
        self._outcomes: deque[Outcome] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        app = f"rtx-runner:{self.name}"
        self._work_db = Database(settings, app)
        self._heartbeat_db = Database(settings, app + "-heartbeat")
        self._control_db = Database(settings, app + "-control")  # start-up and drain, main thread
        self.work = Loop("work", self.work_tick, settings.runner_poll_interval)
        self.heartbeat = Loop(
            "heartbeat", self.heartbeat_tick, settings.heartbeat_interval, max_backoff=settings.heartbeat_interval
        )
        self.reaper = Loop("reaper", self.reap_tick, 0.0)
        self.listener = Listener(settings, app + "-listen")
        self.listener.subscribe("runner", [self._on_notify])
        self._task_entry = task_entry.entry_point()
        self.spares = SparePool(spare_processes)
        self.isolation = isolation  # opened by the CLI before the fork server starts (runner.cgroups)
        self.metrics = RunnerMetrics(self.name)
        self.metrics.set_capacity(capacity.slots, capacity.cpu, capacity.memory_mb)
        self.metrics.track_reserved(self.reserved)
        self.usage = UsageMonitor(self, settings, app)
        # Test only (documented in docs/reliability.md): the first N launches raise OSError, a real
        # start failure before any task code runs. Never set in production.
        self._test_fail_launches = int(os.environ.get("RTX_TEST_FAIL_LAUNCHES") or 0)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.spares.start()  # warm processes before the first task arrives
        self._register(self._control_db)
        self.listener.start()
        self.heartbeat.start()
        self.reaper.start()
        self.work.start()
        self.usage.start()

    def _register(self, db: Database) -> None:
        sent = time.monotonic()
        with db.transaction() as gw:
            gw.register_runner(
                id=self.runner_id,
                name=self.name,
                hostname=self.hostname,
                pid=os.getpid(),
                queues=self.queues,
                slots=self.capacity.slots,
                cpu=self.capacity.cpu,
                memory_mb=self.capacity.memory_mb,
                version=_version(),
                lease_timeout=self.settings.lease_timeout,
            )
        self.lease_valid_until = sent + self.settings.lease_timeout
        log.info(
            "runner registered",
            runner_id=self.runner_id,
            runner=self.name,
            queues=self.queues,
            slots=self.capacity.slots,
            cpu=self.capacity.cpu,
            memory_mb=self.capacity.memory_mb,
        )

    def drain_and_stop(self, timeout: float | None = None) -> None:
        """SIGTERM: take nothing new, give back what has not started, wait for running tasks up to
        ``drain_timeout``, then stop them, report every outcome and deregister."""
        timeout = self.settings.drain_timeout if timeout is None else timeout
        self.stopping = True  # a drain on the way out: `rtx runner resume` cannot undo it
        self.draining = True
        log.info("runner draining", runner_id=self.runner_id, running=len(self._tasks), timeout=timeout)
        self._set_state(self._control_db, "draining", ["active"], release=True)
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._tasks:
            self._stop_all(f"runner stopped after a drain timeout of {timeout:g} s")
        while self._tasks and time.monotonic() < deadline + self.settings.kill_grace + 5:
            time.sleep(0.1)
        flush_deadline = time.monotonic() + max(self.settings.lease_timeout, 5.0)
        while self._outcomes and time.monotonic() < flush_deadline:
            self.work.wake()
            time.sleep(0.1)
        self.listener.stop()
        self.work.stop()
        self.heartbeat.stop()
        self.reaper.stop()
        self.usage.stop()
        self.spares.close()
        if self.isolation is not None:
            self.isolation.close()
        self._set_state(self._control_db, "stopped", ["active", "draining"], release=True)
        for db in (self._work_db, self._heartbeat_db, self._control_db):
            db.close()
        self.metrics.close()
        if self._outcomes:
            log.error("runner stopped with unreported outcomes", count=len(self._outcomes))
        log.info("runner stopped", runner_id=self.runner_id)

    def _set_state(self, db: Database, to_state: str, from_states: list[str], *, release: bool) -> None:
        try:
            with db.transaction() as gw:
                gw.set_runner_state(self.runner_id, to_state, from_states)
                if release:
                    for allocation_id in gw.release_assigned(self.runner_id):
                        log.info("allocation given back", allocation_id=allocation_id, runner_id=self.runner_id)
        except Exception as exc:  # noqa: BLE001 - the lease expiry does the same job if the database is away
            log.warning("could not update runner state", to_state=to_state, error=str(exc))

    # -- wake-ups -------------------------------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        if not payload or payload == self.runner_id:
            self.work.wake()
            self.heartbeat.wake()  # a state change (drain/resume) is seen by the heartbeat

    def _wake_reaper(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    # -- heartbeat ------------------------------------------------------------------------------
    def heartbeat_tick(self) -> bool:
        sent = time.monotonic()
        usage = {
            "host_cpu_percent": psutil.cpu_percent(interval=None),
            "host_memory_used_mb": (psutil.virtual_memory().total - psutil.virtual_memory().available) // 2**20,
        }
        with self._heartbeat_db.transaction() as gw:
            state = gw.heartbeat_runner(self.runner_id, self.settings.lease_timeout, **usage)
        if state is None:
            self._on_declared_lost()
            return False
        self.lease_valid_until = sent + self.settings.lease_timeout
        if state == "draining" and not self.draining:
            log.info("runner drain requested", runner_id=self.runner_id)
            self.draining = True
            self._set_state(self._heartbeat_db, "draining", ["draining"], release=True)
        elif state == "active" and self.stopping:
            log.warning("resume ignored: the runner is shutting down", runner_id=self.runner_id)
            self._set_state(self._heartbeat_db, "draining", ["active"], release=True)
        elif state == "active" and self.draining:
            log.info("runner resumed", runner_id=self.runner_id)
            self.draining = False
            self.work.wake()
        return False

    def _on_declared_lost(self) -> None:
        """Our row is no longer live: the allocator rescued our work. Fence, then start afresh."""
        old = self.runner_id
        self._stop_all("runner was declared lost (lease expired); fencing its tasks")
        self.runner_id = str(uuid.uuid4())
        log.warning("runner was declared lost; registering again", old_runner_id=old, runner_id=self.runner_id)
        self._register(self._heartbeat_db)
        self.work.wake()

    # -- work -----------------------------------------------------------------------------------
    def can_start(self) -> bool:
        left = self.lease_valid_until - time.monotonic()
        return not self.draining and left > self.settings.heartbeat_interval and left > self._fence_lead()

    def _fence_lead(self) -> float:
        """How long before ``lease_valid_until`` fencing begins (SIGTERM; SIGKILL FENCE_MARGIN before it)."""
        return self.settings.kill_grace + FENCE_MARGIN

    def work_tick(self) -> bool:
        # Outcomes first, and again between starts: an outcome frees a slot in Airflow (the
        # scheduler queues the next task only once it is reported), so a burst of starts (each
        # may fork a process) must not hold it back.
        self._flush_outcomes()
        if self.can_start():
            with self._work_db.statements() as gw:
                rows = gw.start_assigned(self.runner_id)
            started_rows = time.monotonic()
            pids = {}
            for row in rows:
                if self._outcomes:
                    self._flush_outcomes()
                pid = self._spawn(row)
                if pid is not None:
                    pids[str(row["id"])] = pid
                    # insert -> task process started: age at the start query (database clock) + our time since
                    self.metrics.pickup_latency.labels(row["queue"]).observe(
                        max(0.0, row["age_s"] + time.monotonic() - started_rows)
                    )
            if pids:
                with self._work_db.statements() as gw:
                    gw.set_allocation_pids(self.runner_id, pids)
        self._flush_outcomes()
        with self._work_db.statements() as gw:
            cancelled = gw.cancel_requested_on_runner(self.runner_id)
        for allocation_id in cancelled:
            self._stop(allocation_id, "revoked by the scheduler")
        if time.monotonic() - self._last_orphan_check > self.settings.lease_timeout:
            self._fail_orphans()
        return False

    def _fail_orphans(self) -> None:
        """Rows 'running' on this runner with no process here: the reply to a start was lost (the
        connection broke after the commit). Without this they would stay running forever, since
        this runner's lease keeps being renewed. Checked once per lease period."""
        self._last_orphan_check = time.monotonic()
        with self._work_db.statements() as gw:
            rows = gw.running_on_runner(self.runner_id, self.settings.lease_timeout)
        with self._tasks_lock:
            known = set(self._tasks)
        known |= {o.allocation_id for o in tuple(self._outcomes)}
        for allocation_id in rows:
            if allocation_id not in known:
                log.error("allocation running here without a process; failing it", allocation_id=allocation_id)
                self._outcomes.append(
                    Outcome(allocation_id, self.runner_id, "failed", None, "the runner had no process for it", True)
                )
        self._flush_outcomes()

    def _spawn(self, row: dict) -> int | None:
        allocation_id = str(row["id"])
        label = (
            f"{row['dag_id']}.{row['task_id']} run={row['run_id']} try={row['try_number']}"
            if row["kind"] == "task"
            else f"callback {row['callback_id']}"
        )
        env = {"RTX_ALLOCATION_ID": allocation_id, "RTX_RUNNER_ID": self.runner_id}
        cgroup = None
        try:
            self._before_launch()
            if self.isolation is not None:
                cgroup = self.isolation.create(allocation_id, row["memory_mb"], row["cpu"])
                env.update(task_env(cgroup))
            process = self.spares.launch(self._task_entry, row["workload"], env, self.server_url, f"rtx task: {label}")
        except Exception as exc:  # noqa: BLE001 - a task that cannot start fails alone
            if cgroup is not None:
                self.isolation.release(cgroup)
            # launch returns once the workload is handed over: an error before that ran no task code
            log.exception("could not start task process", allocation_id=allocation_id)
            self._outcomes.append(
                Outcome(allocation_id, self.runner_id, "failed", None, f"could not start task process: {exc}", True)
            )
            self.work.wake()
            return None
        pid = process.pid  # before the handle is shared: a fast task may be reaped (closed) at once
        handle = TaskHandle(
            allocation_id,
            self.runner_id,
            label,
            process,
            pid=pid,
            slots=row["slots"],
            cpu=row["cpu"],
            memory_mb=row["memory_mb"],
            log_path=log_path_of(row["workload"]),
            oom_kills_at_start=self.usage.oom_kills,
            cgroup=cgroup,
        )
        with self._tasks_lock:
            self._tasks[allocation_id] = handle
        self._wake_reaper()
        log.info("task started", allocation_id=allocation_id, runner_id=self.runner_id, task=label, pid=pid)
        return pid

    def _before_launch(self) -> None:
        """Refuse a launch that cannot be fenced in time or that a test asked to fail (OSError)."""
        if time.monotonic() >= self.lease_valid_until - self._fence_lead():
            raise OSError("the runner's lease ran out before the task could start (it cannot renew it)")
        if self._test_fail_launches > 0:
            self._test_fail_launches -= 1
            raise OSError("launch refused by RTX_TEST_FAIL_LAUNCHES (test only)")

    def _flush_outcomes(self) -> None:
        while self._outcomes:
            outcome = self._outcomes[0]
            with self._work_db.statements() as gw:
                if outcome.start_failed:
                    state = gw.retry_start(
                        outcome.allocation_id, outcome.runner_id, outcome.reason or "", self.settings.start_retries
                    )
                else:
                    state = gw.finish_allocation(
                        outcome.allocation_id, outcome.runner_id, outcome.state, outcome.exit_code, outcome.reason
                    )
            self._outcomes.popleft()
            if state == "unassigned":
                log.warning(
                    "task start failed before it ran; put back for placement",
                    allocation_id=outcome.allocation_id,
                    runner_id=outcome.runner_id,
                    reason=outcome.reason,
                )
                continue
            self.metrics.observe_completion(state or "lost")
            if state is None:
                log.warning(
                    "outcome not recorded: allocation no longer running on this runner (rescued)",
                    allocation_id=outcome.allocation_id,
                    runner_id=outcome.runner_id,
                )
            else:
                log.info(
                    "task finished",
                    allocation_id=outcome.allocation_id,
                    runner_id=outcome.runner_id,
                    state=state,
                    exit_code=outcome.exit_code,
                    reason=outcome.reason,
                )

    # -- reaper: exits, stop escalation and fencing (no database here) ---------------------------
    def reap_tick(self) -> bool:
        with self._tasks_lock:
            handles = {h.process.sentinel: h for h in self._tasks.values()}
        ready = multiprocessing.connection.wait([*handles, self._wake_r], timeout=self._reap_timeout())
        for sentinel in ready:
            if sentinel == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            handle = handles[sentinel]
            code = exit_code(handle.process)
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
            self._outcomes.append(Outcome(handle.allocation_id, handle.runner_id, state, code, reason))
            with self._tasks_lock:
                self._tasks.pop(handle.allocation_id, None)
            handle.process.close()
        if any(sentinel != self._wake_r for sentinel in ready):
            self.work.wake()
        now = time.monotonic()
        # Invariant: a task of a runner that cannot renew its lease is dead before the database can
        # call that lease expired. lease_valid_until is never later than the database's expiry, so
        # SIGKILL of the whole tree FENCE_MARGIN before it, after SIGTERM kill_grace earlier.
        kill_at = self.lease_valid_until - FENCE_MARGIN
        if self._tasks and now >= kill_at - self.settings.kill_grace:
            self._stop_all("runner could not renew its lease; stopping its tasks before it expires so they never run twice")
        for handle in list(self._tasks.values()):
            if handle.term_sent_at is not None and (now - handle.term_sent_at > self.settings.kill_grace or now >= kill_at):
                _signal_group(handle.pid, signal.SIGKILL)
        return True

    def _release_cgroup(self, handle: TaskHandle, code: int | None) -> str | None:
        """Remove an exited task's cgroup (killing what it left); its OOM reason if the kernel killed it."""
        if self.isolation is None:
            return None
        self.isolation.sweep_pending()  # cgroups a still-dying process kept busy at an earlier exit
        if handle.cgroup is None:
            return None
        stats, oom = self.isolation.finish(handle.cgroup, failed=code != 0 or handle.stop_reason is not None)
        if stats is not None and stats.peak_bytes is not None:
            handle.peak_rss_mb = max(handle.peak_rss_mb or 0, stats.peak_mb)
        return oom

    def _reap_timeout(self) -> float:
        """Wait for exits at most until the next stop or fencing deadline (0.5 s when none is near)."""
        now, grace = time.monotonic(), self.settings.kill_grace
        handles = self.task_handles()
        deadlines = [h.term_sent_at + grace for h in handles if h.term_sent_at is not None]
        if handles:
            deadlines += [self.lease_valid_until - FENCE_MARGIN - grace, self.lease_valid_until - FENCE_MARGIN]
        return min([0.5, *(d - now for d in deadlines if d > now)])

    def _stop(self, allocation_id: str, reason: str) -> None:
        with self._tasks_lock:
            handle = self._tasks.get(allocation_id)
        if handle is None or handle.term_sent_at is not None:
            return
        handle.stop_reason = reason
        handle.term_sent_at = time.monotonic()
        log.warning("stopping task", allocation_id=allocation_id, runner_id=handle.runner_id, reason=reason)
        _signal_group(handle.pid, signal.SIGTERM)
        self._wake_reaper()

    def _stop_all(self, reason: str) -> None:
        for allocation_id in list(self._tasks):
            self._stop(allocation_id, reason)

    @property
    def running_count(self) -> int:
        return len(self._tasks)

    def task_handles(self) -> list[TaskHandle]:
        with self._tasks_lock:
            return list(self._tasks.values())

    def reserved(self) -> tuple[int, float, int, int]:
        """(slots, cpu, memory_mb, tasks) reserved by the tasks this runner runs."""
        handles = self.task_handles()
        return (
            sum(h.slots for h in handles),
            round(sum(h.cpu for h in handles), 3),
            sum(h.memory_mb for h in handles),
            len(handles),
        )


def _oom_killed_since(handle: TaskHandle, code: int | None) -> bool:
    """Did the kernel's OOM killer strike the runner's cgroup while a failed task ran?"""
    if code == 0 or handle.oom_kills_at_start is None:
        return False
    now = oom_kills()
    return now is not None and now > handle.oom_kills_at_start


def _signal_group(pid: int | None, sig: signal.Signals) -> None:
    """SIGTERM goes to the task process (Airflow's supervisor forwards it to the task for a graceful
    stop); SIGKILL goes to the whole tree, whatever process groups it made."""
    if pid is None:
        return
    if sig == signal.SIGKILL:
        task_entry.kill_tree(pid, sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the task process leads its own group (setpgid in the child)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rtx-runtime-executor")
    except Exception:  # noqa: BLE001
        return "unknown"
