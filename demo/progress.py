"""What the user reads: one line per step, errors as one line plus where to look, secrets masked."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_secrets: list[str] = []  # masked in everything the demo prints


class DemoError(Exception):
    """One clear line for the user, and where to look: log files (``see: ...``) or a hint sentence."""

    def __init__(self, message: str, where: str | Path | list[Path] | None = None) -> None:
        super().__init__(message)
        self.where = where


def add_secret(secret: str | None) -> None:
    """Never print ``secret`` (a database password) from here on."""
    if secret:
        _secrets.append(secret)


def mask(text: str) -> str:
    from runtime_executor.settings import redact_url

    text = redact_url(text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def rel(path: Path | str) -> str:
    """``path`` relative to the working directory when it is below it (shorter to read)."""
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd())) or "."
    return str(path)


def where(hint: str | Path | list[Path] | None) -> str:
    """A DemoError's ``where`` as the line printed under the error."""
    if hint is None:
        return ""
    if isinstance(hint, str):
        return hint
    return "see: " + ", ".join(rel(w) for w in (hint if isinstance(hint, list) else [hint]))


def say(text: str = "") -> None:
    print(mask(text), flush=True)


class Step:
    def __init__(self, number: int, total: int, label: str) -> None:
        self.prefix = f"  [{number}/{total}] {label:<11} "
        self.detail = ""
        self.lines: list[str] = []


@contextlib.contextmanager
def step(number: int, total: int, label: str) -> Iterator[Step]:
    """Print ``[n/N] label`` now and ``detail (time)`` when the step is done (or ``failed``)."""
    s = Step(number, total, label)
    print(s.prefix, end="", flush=True)
    started = time.monotonic()
    try:
        yield s
    except BaseException:
        print(f"failed after {time.monotonic() - started:.1f}s", flush=True)
        raise
    say(f"{s.detail}  ({time.monotonic() - started:.1f}s)")
    for line in s.lines:
        say(line)


def wait_until(
    what: str, predicate: Callable[[], Any], timeout: float, where: Any, check=None, interval: float = 0.5
) -> Any:
    """Poll ``predicate`` until it returns something true (returned); ``check`` raises when waiting
    is pointless (a daemon died). Past ``timeout``: a DemoError ``<what> after <timeout>s``."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"{what} after {timeout:g}s", where)
        time.sleep(interval)
