"""Loaded (via PYTHONPATH) only by processes a test runs under libfaketime with a real monotonic clock.

libfaketime 0.9.10 (Debian 12) with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` fails every absolute
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` with EINVAL, and Python 3.11's ``time.sleep`` is
exactly that call; with the monotonic clock faked instead, every timed lock or condition wait
(``threading.Event.wait``) sleeps for the whole offset. So those processes keep the real monotonic
clock and sleep through ``select`` (a relative timeout, which libfaketime passes through untouched).
Only the wall clock is off, as on a host whose clock is wrong.
"""

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
