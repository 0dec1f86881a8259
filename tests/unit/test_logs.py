"""Log redaction: no database password in a log line, a JSON exception or a console traceback."""

from __future__ import annotations

import pytest
import structlog

from runtime_executor.logs import configure_logging

URL = "postgresql://rtx:hunter2-secret@db.example:5432/airflow"


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_an_exception_with_a_password_url_is_redacted(log_format, capsys):
    configure_logging(log_format)
    try:
        raise ConnectionError(f"connection to {URL} failed")
    except ConnectionError:
        structlog.get_logger("test").exception("database unavailable", url=URL)
    err = capsys.readouterr().err
    assert "ConnectionError" in err and "Traceback" in err  # the traceback is there
    assert "hunter2" not in err
    assert "postgresql://rtx:***@db.example:5432/airflow" in err
