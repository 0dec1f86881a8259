"""The reason of a failure rtx decided, written into the task's own Airflow log.

A task that rtx fails before its process ran (a bad resource request, unschedulable, every start
failed) or whose runner was lost has no log line of its own saying why: the UI would show an empty
log. The executor shim (scheduler side) writes the reason where Airflow's log reader looks.

Who writes what:

* this module (in the scheduler): a ``failed`` outcome whose task process never ran
  (``process_started_at`` is NULL), and every ``lost`` outcome (its process died with its runner);
* the runner: failures of a task process that ran (its own error, exit codes, an OOM kill, memory
  enforcement), in the same file, from the runner's side.

Where: the file the log reader reads for that try, rendered by Airflow's own ``FileTaskHandler``
(the DAG run's log filename template), under its ``base_log_folder``. When a remote task log is
configured (``airflow.logging_config.get_remote_task_log()``), the file is also uploaded through it, so the
UI finds it with remote logging too. One JSON line per failure in
the shape the task supervisor writes, so the UI renders it like any other line.

States of an entry: ``pending`` (queued by ``sync()``) -> ``written`` | ``dropped``.
Failure cases, none of which reaches ``sync()``:

* the task instance or its DAG run is gone, or the file cannot be written (permissions, disk):
  a warning in the scheduler log, dropped; the outcome was reported regardless;
* the remote upload fails: a warning; the local file stays;
* more than ``MAX_PENDING`` entries wait (the writer is stuck): the newest are dropped with a warning;
* a second delivery of the same outcome (``sync()`` delivers at least once): written once
  (the ids of the last ``REMEMBERED`` allocations taken are kept);
* the scheduler stops with entries pending: ``stop()`` waits at most a few seconds; what is left
  is lost (the Audit Log and the allocation row keep the reason).

Invariant: the scheduler loop's thread only appends to a deque (never blocks, never raises); the
database reads, file writes and uploads run on this module's own ``Loop``.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

import structlog

from runtime_executor.loop import Loop
from runtime_executor.settings import error_line, redact_url

log = structlog.get_logger("rtx.failure_log")

MAX_PENDING = 10_000
REMEMBERED = 50_000  # allocation ids already taken (a second delivery writes nothing)
LOGGER = "rtx.executor"


def wants_log_line(row: dict) -> bool:
    """Whether a delivered outcome is one whose reason only rtx can write into the task's log."""
    if row.get("kind") != "task":
        return False
    if row["state"] == "lost":
        return True
    return row["state"] == "failed" and not row.get("process_ran")


def log_line(row: dict, at: dt.datetime | None = None) -> str:
    """One JSON line, in the shape of the task supervisor's own lines (timestamp, level, event, logger)."""
    when = (at or row.get("finished_at") or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    reason = redact_url(str(row.get("reason") or f"allocation {row['id']} {row['state']}"))
    what = "the task's runner was lost" if row["state"] == "lost" else "the task did not run"
    record = {
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": "error",
        "event": f"rtx (RuntimeExecutor) failed this try: {what}: {reason}",
        "task": f"{row['dag_id']}.{row['task_id']}",
        "run_id": row["run_id"],
        "map_index": row["map_index"],
        "try_number": row["try_number"],
        "allocation_id": str(row["id"]),
        "logger": LOGGER,
    }
    return json.dumps(record, separators=(",", ":"), default=str) + "\n"


class FailureLogWriter:
    """Writes failure reasons into task logs, off the scheduler's thread."""

    def __init__(self, interval: float = 5.0) -> None:
        self._pending: collections.deque[dict] = collections.deque()
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.loop = Loop("rtx-failure-log", self._tick, interval)
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self.loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Give what is pending up to ``timeout`` s, then stop."""
        if self.loop.is_alive():
            self.loop.wake()
            self._idle.wait(timeout)
            self.loop.stop(timeout)
        with self._lock:
            left = len(self._pending)
        if left:
            log.warning("rtx stops with failure reasons not written to their task logs", count=left)

    def submit(self, row: dict) -> None:
        """Called by sync() for every delivered outcome: O(1), never blocks, never raises."""
        try:
            if not wants_log_line(row):
                return
            entry, allocation_id = dict(row), str(row["id"])
            with self._lock:
                if allocation_id in self._seen:
                    return
                full = len(self._pending) >= MAX_PENDING
                if full:
                    self.dropped += 1
                else:
                    self._seen[allocation_id] = None
                    while len(self._seen) > REMEMBERED:
                        self._seen.popitem(last=False)
                    self._pending.append(entry)
                    self._idle.clear()
            if full:
                log.warning(
                    "failure-log queue full; reason not written to the task log", allocation_id=str(row["id"])
                )
                return
            self.loop.wake()
        except Exception:  # noqa: BLE001 - never fails sync()
            log.warning("could not queue a failure reason for the task log", exc_info=True)

    def _tick(self) -> bool:
        with self._lock:
            if not self._pending:
                self._idle.set()
                return False
            entry = self._pending.popleft()
        try:
            self.write(entry)
        except Exception as exc:  # noqa: BLE001 - dropped with a warning, never retried forever
            self.dropped += 1
            log.warning(
                "could not write the failure reason into the task's log",
                allocation_id=str(entry["id"]),
                task=f"{entry.get('dag_id')}.{entry.get('task_id')}",
                error=f"{type(exc).__name__}: {error_line(exc)}",
            )
        return True

    # -- the write itself (Airflow from here on) --------------------------------------------------
    def write(self, row: dict) -> Path:
        """Append the reason to the try's log file, upload it when remote logging is set; its path."""
        from airflow.utils.session import create_session

        with create_session(scoped=False) as session:
            ti = _task_instance(row, session)
            if ti is None:
                raise LookupError(
                    f"task instance {row['dag_id']}.{row['task_id']} run {row['run_id']} is gone"
                )
            handler = _file_task_handler()
            relative = handler._render_filename(ti, int(row["try_number"]), session=session)
            path = Path(handler.local_base, relative)
            _append(path, log_line(row).encode())
            _upload(path, ti)
        self.written += 1
        log.info("failure reason written into the task's log", allocation_id=str(row["id"]), path=str(path))
        return path


def _task_instance(row: dict, session: Any) -> Any:
    """The task instance (or, once it moved on to a later try, its history row) of that try."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from sqlalchemy import select

    where = dict(
        dag_id=row["dag_id"], task_id=row["task_id"], run_id=row["run_id"], map_index=row["map_index"]
    )
    ti = session.scalar(select(TaskInstance).filter_by(**where))
    if ti is not None and ti.try_number != row["try_number"]:
        history = session.scalar(select(TaskInstanceHistory).filter_by(**where, try_number=row["try_number"]))
        ti = history or ti  # the path depends on dag/task/run/map index; the try number is passed apart
    return ti


def _file_task_handler() -> Any:
    """The handler the api-server reads task logs with (``[logging] task_log_reader``), or one like it."""
    from airflow.configuration import conf
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.log.log_reader import TaskLogReader

    handler = TaskLogReader().log_handler
    if isinstance(handler, FileTaskHandler) and handler.local_base and handler.local_base != os.devnull:
        return handler
    return FileTaskHandler(base_log_folder=conf.get("logging", "base_log_folder"))


def _append(path: Path, line: bytes) -> None:
    """One O_APPEND write (never interleaved with another writer's lines)."""
    from airflow.configuration import conf

    folder_mode = int(conf.get("logging", "file_task_handler_new_folder_permissions", fallback="0o775"), 8)
    file_mode = int(conf.get("logging", "file_task_handler_new_file_permissions", fallback="0o664"), 8)
    path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _upload(path: Path, ti: Any) -> None:
    """Through Airflow's remote task log, when one is configured, as the task supervisor uploads.

    Also a file that existed (a lost task's, on this host): Airflow's remote logs append what an
    upload brings to what they hold and then empty or delete the local copy (S3RemoteLogIO), so
    the local file holds only lines not uploaded yet and nothing is stored twice."""
    from airflow.logging_config import get_remote_task_log

    remote = get_remote_task_log()
    if remote is not None:
        remote.upload(path, ti)
