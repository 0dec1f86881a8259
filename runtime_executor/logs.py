"""structlog set-up shared by the daemons and the CLI: console on a terminal, JSON otherwise.

A processor drops secrets: any value of a key that looks like a token or password is masked, and
database URLs in any string value lose their password. Tracebacks too: JSON's ``exception`` string is
a value like any other; the console renders exceptions itself, after the processors, so its
formatter redacts what it prints.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import TextIO

import structlog

from runtime_executor.settings import redact_url

_SECRET_KEYS = ("token", "password", "secret")


def _redact(_logger, _name, event_dict):
    for key, value in list(event_dict.items()):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event_dict[key] = "***"
        elif isinstance(value, str) and ("://" in value or "password" in value):
            event_dict[key] = redact_url(value)
    return event_dict


def _redacted_traceback(sio: TextIO, exc_info: structlog.typing.ExcInfo) -> None:
    """The console's exception formatter: a plain traceback (rich's default prints every frame's
    local variables, and a secret in one would pass no URL pattern), through ``redact_url``."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    sio.write(redact_url(text.getvalue()))


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    if log_format not in ("console", "json"):
        raise ValueError(f"log_format={log_format!r} must be console, json or auto")
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=_redacted_traceback)
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if log_format == "json"
            else structlog.processors.StackInfoRenderer(),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
