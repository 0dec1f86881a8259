"""Which outcomes get a line in the task's log, what the line says, and the queue that feeds the writer."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from runtime_executor import failure_log
from runtime_executor.failure_log import FailureLogWriter, log_line, wants_log_line

FINISHED = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def _row(state: str = "failed", *, process_ran: bool = False, kind: str = "task", **extra) -> dict:
    return {
        "id": uuid.uuid4(),
        "kind": kind,
        "dag_id": "etl",
        "task_id": "load",
        "run_id": "manual__1",
        "map_index": -1,
        "try_number": 2,
        "state": state,
        "reason": "task etl.load has a bad resource request: memory='lots'",
        "process_ran": process_ran,
        "finished_at": FINISHED,
        **extra,
    }


@pytest.mark.parametrize(
    ("row", "wanted"),
    [
        (_row("failed"), True),  # bad request, unschedulable, every start failed: no process ever ran
        (_row("lost"), True),  # its process went with its runner
        (_row("lost", process_ran=True), True),
        (_row("failed", process_ran=True), False),  # the task's own error or exit: the runner's to write
        (_row("succeeded"), False),
        (_row("running"), False),
        (_row("failed", kind="callback"), False),  # a callback has no task log
    ],
)
def test_only_failures_no_task_process_could_explain_get_a_line(row, wanted):
    assert wants_log_line(row) is wanted


def test_the_line_is_parsed_by_airflows_log_reader_with_its_time_and_level():
    from airflow.utils.log.file_task_handler import _log_stream_to_parsed_log_stream

    row = _row("failed")
    [(timestamp, _, message)] = list(_log_stream_to_parsed_log_stream(iter([log_line(row).rstrip("\n")])))
    assert timestamp == FINISHED
    assert message.level == "error"
    assert message.event == (
        "rtx (RuntimeExecutor) failed this try: the task did not run: "
        "task etl.load has a bad resource request: memory='lots'"
    )
    extra = message.model_dump()
    assert (
        extra["allocation_id"] == str(row["id"]) and extra["try_number"] == 2 and extra["task"] == "etl.load"
    )
    assert extra["logger"] == "rtx.executor"


def test_a_lost_runner_is_named_and_a_password_in_a_reason_is_not():
    row = _row("lost", reason="runner r1 stopped heartbeating; postgresql://rtx:s3cretpw@db:5432/airflow")
    line = log_line(row)
    assert "the task's runner was lost: runner r1 stopped heartbeating" in line
    assert "s3cretpw" not in line and "db:5432" in line


def test_a_row_without_a_reason_still_says_what_happened():
    row = _row("lost", reason=None)
    assert f"allocation {row['id']} lost" in log_line(row)


def test_a_second_delivery_is_queued_once_and_bad_rows_never_raise():
    writer = FailureLogWriter()  # not started: what submit() queues stays visible
    row = _row("failed")
    writer.submit(row)
    writer.submit(dict(row))  # sync() delivers at least once
    writer.submit(_row("failed", process_ran=True))
    writer.submit({"kind": "task", "state": "failed"})  # no id: a warning, never an exception into sync()
    assert [str(r["id"]) for r in writer._pending] == [str(row["id"])]


def test_a_full_queue_drops_the_newest_with_a_count(monkeypatch):
    monkeypatch.setattr(failure_log, "MAX_PENDING", 2)
    writer = FailureLogWriter()
    rows = [_row("failed") for _ in range(3)]
    for row in rows:
        writer.submit(row)
    assert [r["id"] for r in writer._pending] == [r["id"] for r in rows[:2]]
    assert writer.dropped == 1
