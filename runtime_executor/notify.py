"""systemd's notify protocol (``sd_notify(3)``), for ``Type=notify`` units with ``WatchdogSec=``.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the Unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). We send ``READY=1`` once the
daemon serves, ``WATCHDOG=1`` while it is healthy, ``STOPPING=1`` when it begins to stop and
``STATUS=...`` (one line shown by ``systemctl status``). Without ``$NOTIFY_SOCKET`` (supervisor, a
terminal, the tests) every call is a no-op.

Written here rather than taken from PyPI: ``sdnotify`` does the same ~20 lines but is unmaintained
(last release 2017) and ignores the abstract namespace and ``$WATCHDOG_PID``; ``systemd-python``
needs libsystemd headers and a compiler. The protocol itself is stable and tiny.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        elif address and not address.startswith("/"):
            address = None  # e.g. "vsock:..." (systemd >= 254 in VMs): not supported, stay silent
        self.address = address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """The notifier systemd set up for this process (``unset``: hide it from child processes)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "")) or None
        except ValueError:
            usec = None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = None  # the watchdog is meant for another process (e.g. our parent)
        notifier = cls(env.get("NOTIFY_SOCKET") or None, usec)
        if unset and environ is None:
            for name in NOTIFY_VARIABLES:
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` (half the timeout, as sd_watchdog_enabled(3) advises)."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2e6

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one datagram; False when off or not delivered."""
        if self.address is None or not fields:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False  # systemd gone or socket not there: never a reason to fail a daemon

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.notify(*_status(status))


def _status(status: str | None) -> list[str]:
    return [f"STATUS={' '.join(status.split())}"] if status else []
