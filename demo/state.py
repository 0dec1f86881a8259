"""``<dir>/state.json``: what this demo started, so that ``stop`` signals exactly those processes.

A process is recorded (pid and start time, so a reused pid is never signalled) the moment it exists;
the file is rewritten atomically after every change. One ``start`` or ``stop`` at a time per folder
(``demo_lock``, an exclusive non-blocking ``flock`` on ``<dir>/.lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from demo.config import REPO
from demo.progress import DemoError, rel

STATE_VERSION = 1


def demo_dir(option: str | None) -> Path:
    return Path(option or os.environ.get("RTX_DEMO_DIR") or REPO / ".demo").resolve()


def stop_command(root: Path) -> str:
    """What to type to stop the demo in ``root``."""
    if root == (REPO / ".demo").resolve():
        return "make demo-stop"
    return f"{rel(Path(sys.executable))} -m demo stop --dir {shlex.quote(rel(root))}"


class State:
    """``<dir>/state.json``: what this demo started, rewritten (atomically) after every change."""

    def __init__(self, root: Path, data: dict[str, Any] | None = None) -> None:
        self.root = root
        self.path = root / "state.json"
        self.data = data or {
            "version": STATE_VERSION,
            "status": "starting",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dir": str(root),
            "database": None,
            "ui": None,
            "processes": [],
        }

    @classmethod
    def load(cls, root: Path) -> State | None:
        path = root / "state.json"
        if not path.exists():
            return None
        try:
            return cls(root, json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise DemoError(f"cannot read {rel(path)}: {exc}", "remove it if no demo is running") from None

    @property
    def processes(self) -> list[dict[str, Any]]:
        return self.data["processes"]

    def record(self, name: str, role: str, pid: int, log: Path | None) -> dict[str, Any]:
        entry = {
            "name": name,
            "role": role,
            "pid": pid,
            "create_time": psutil.Process(pid).create_time(),
            "log": str(log) if log else None,
        }
        self.processes.append(entry)
        self.save()
        return entry

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def live_process(entry: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it still runs *and is the same process* (pids get reused)."""
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["create_time"]) > 0.5:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


@contextlib.contextmanager
def demo_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another 'demo' command is working on {rel(root)}",
                "wait for it to finish, then try again",
            ) from None
        yield
