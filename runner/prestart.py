"""A task process forked ahead of its task, so that Airflow's supervisor does not fork on the start path.

A spare (runner.spares) is Airflow's task supervisor for many tasks in turn, and that supervisor
forks each task process after it got the workload. Traced on ``bench.airflow``'s chain_20
(2026-12-06): of the ~17 ms from a reused spare receiving its workload to the task's start_date,
``os.fork()`` of the 130-150 MB spare took 4-15 ms (3-6 ms on an idle host: copying its page
tables) and the first ~5 ms after it went to the new child's start-up competing for the two cores.
LocalExecutor's workers pay the same fork. So a spare, once it has reported a task and waits for the
next, forks the next task process at once (``prestart``); the child does what Airflow's forked child
does first (``_fork_main``: signals, stdio onto the supervisor's sockets, logging over the JSON
channel) and then waits. When the next task comes, the supervisor's ``WatchedSubprocess.start()``
gets that child's sockets and pid instead of making new ones (``offered``); everything after, from
the Execution API's ``start`` to the task's StartupDetails, is Airflow's own.

The one pre-started child a spare may hold, and what happens to it::

    none --prestart (idle spare, after a task's report)--> waiting: forked, Airflow's child start-up
        done, blocked on its start pipe. No task code, no workload, no token, and (as when
        supervise_task forks) the secrets masker emptied of the previous task's secrets first.
    waiting --a task, usable--> taken: start()'s four socketpair() calls get its sockets, its
        os.fork() gets its pid, and the start message (the spare's environment and process title
        now, as a fork now would have given them) goes down the pipe; the child applies it and runs
        Airflow's task-runner main, which waits for its StartupDetails like any task process.
    waiting --not usable--> discarded (SIGKILL, reaped, sockets closed), and start() forks as always:
        a callback; the DAG cache parsed since (``marker``: the fork holds an older parse); the spare
        joined a cgroup since; a start() called otherwise than Airflow 3.1-3.3's ActivitySubprocess
        does (another target, fork+exec, another process-group choice), or one whose source differs
        from the lines this mirrors (``supported``: then nothing is pre-started at all).

Failure cases: the spare dies or is retired (EOF on its pipe to the runner): the child reads EOF on
its start pipe and exits without running anything (a retiring spare also kills and reaps it,
``discard``). The child dies while waiting: ``offered`` sees it and start() forks as always. Only the
supervisor that took the child sends its StartupDetails, after the API's ``start``: a pre-started
child never runs a task nobody started. ``RTX_TASK_PRESTART=0`` in the runner's environment turns
this off (each task forked by its supervisor, as Airflow does).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from airflow.sdk.execution_time import supervisor

log = structlog.get_logger("rtx.prestart")

# What WatchedSubprocess.start() does around its fork (Airflow 3.1, 3.2, 3.3), in this order:
# ``_child_main`` below repeats the child's side. Where the installed source differs, no prestart.
_SHAPE = (
    "child_stdout, read_stdout = socketpair()",
    "child_stderr, read_stderr = socketpair()",
    "child_requests, read_requests = socketpair()",
    "child_logs, read_logs = socketpair()",
    "pid = os.fork()",
    "cls._close_unused_sockets(read_requests, read_stdout, read_stderr, read_logs)",
    "_fork_main(child_requests, child_stdout, child_stderr, child_logs.fileno(), target)",
)

Pair = tuple[socket.socket, socket.socket]  # (child's end, supervisor's end), as start() names them


@dataclass(eq=False)
class Prestarted:
    pid: int
    pairs: list[Pair]  # stdout, stderr, requests, logs: start()'s socketpair() order
    go: int | None  # the write end of the child's start pipe
    target: Callable[[], None]
    new_process_group: bool
    cgroup: bytes
    marker: Any
    handed: list[Pair] = field(default_factory=list)  # given to start() (theirs to close)
    taken: bool = False  # start() got it and it was sent its start


_held: Prestarted | None = None  # the spare's waiting child
_offer: Prestarted | None = None  # the child the next start() may take
_original_start: Callable[..., Any] | None = None
_own_process_group = False  # 3.3's start() puts the task in a process group of its own; 3.1, 3.2 do not


def supported() -> bool:
    try:
        source = inspect.getsource(supervisor.WatchedSubprocess.start)
    except (OSError, TypeError):
        return False
    at = 0
    for line in _SHAPE:
        at = source.find(line, at)
        if at < 0:
            return False
    return True


def install() -> bool:
    """Make ``WatchedSubprocess.start`` take an offered child (once per process; False where the
    installed Airflow's start() is not the one this mirrors, or when turned off)."""
    global _original_start, _own_process_group
    if _original_start is not None:
        return True
    if os.environ.get("RTX_TASK_PRESTART", "1") == "0" or not supported() or not hasattr(os, "fork"):
        return False
    _original_start = supervisor.WatchedSubprocess.__dict__["start"].__func__
    _own_process_group = "new_process_group" in inspect.signature(_original_start).parameters

    @functools.wraps(_original_start)
    def start(cls: type, *args: Any, **kwargs: Any) -> Any:
        offer = _take_offer()
        if offer is None:
            return _original_start(cls, *args, **kwargs)
        if (
            args
            or kwargs.get("target", supervisor._subprocess_main) is not offer.target
            or kwargs.get("use_exec", False)
            or bool(kwargs.get("new_process_group", False)) != offer.new_process_group
        ):
            discard(offer)
            return _original_start(cls, *args, **kwargs)
        with _substituted(offer):
            return _original_start(cls, *args, **kwargs)

    supervisor.WatchedSubprocess.start = classmethod(start)  # type: ignore[method-assign, assignment]
    return True


def _cgroup() -> bytes:
    try:
        with open("/proc/self/cgroup", "rb") as f:
            return f.read()
    except OSError:
        return b""


def prestart(marker: Any = None, target: Callable[[], None] | None = None) -> int | None:
    """Fork the next task process now (replacing a waiting one); its pid, None when off. ``marker``
    is what must be unchanged when the task comes (the DAG cache's generation)."""
    global _held
    if _original_start is None:
        return None
    discard()
    if not _forget_masked_secrets():
        return None
    target = target or supervisor._subprocess_main
    group = _own_process_group
    pairs: list[Pair] = []
    go_r = go_w = -1
    try:
        pairs = [socket.socketpair() for _ in range(4)]
        go_r, go_w = os.pipe()
        pid = os.fork()
    except OSError:
        _close(pairs, go_r, go_w)
        raise
    if pid == 0:
        _child_main(pairs, go_r, go_w, target, group)  # never returns
    os.close(go_r)
    _held = Prestarted(pid, pairs, go_w, target, group, _cgroup(), marker)
    return pid


def _forget_masked_secrets() -> bool:
    """What supervise_task does just before its fork: forget the secrets the spare masked for the
    previous task (values its supervisor forwarded), or the child forked now would still hold them,
    reachable, while it runs the next task. False where that cannot be done: then no fork ahead."""
    try:
        from airflow.sdk._shared.secrets_masker import reset_secrets_masker
    except ImportError:
        return False
    reset_secrets_masker()
    return True


def _child_main(pairs: list[Pair], go_r: int, go_w: int, target: Callable[[], None], group: bool) -> None:
    """The pre-started child: what start()'s child does, with the start message awaited first."""
    try:
        os.close(go_w)
        if group:
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
        stdout, stderr, requests, logs = pairs  # each (child's end, supervisor's end)
        supervisor.WatchedSubprocess._close_unused_sockets(requests[1], stdout[1], stderr[1], logs[1])
        supervisor._fork_main(requests[0], stdout[0], stderr[0], logs[0].fileno(), _awaiting(go_r, target))
    except BaseException:  # noqa: BLE001 - never leave this block: we are a forked child
        pass
    os._exit(124)


def _awaiting(go_r: int, target: Callable[[], None]) -> Callable[[], None]:
    def main() -> None:
        chunks = []
        while chunk := os.read(go_r, 65536):
            chunks.append(chunk)
        os.close(go_r)
        if not chunks:
            os._exit(0)  # discarded, or the spare died: nothing ran
        message = json.loads(b"".join(chunks))
        os.environ.clear()
        os.environ.update(message["environ"])
        if message.get("title"):
            with contextlib.suppress(ImportError):
                from setproctitle import setproctitle

                setproctitle(message["title"])
        target()

    return main


@contextlib.contextmanager
def offered(usable: bool, marker: Any = None) -> Iterator[None]:
    """While one task's supervisor runs: its start() may take the waiting child (if ``usable`` and
    ``marker`` and the cgroup are as when it was forked); a child not taken is discarded after."""
    global _held, _offer
    held, _held = _held, None
    if held is not None and (
        not usable or held.marker != marker or held.cgroup != _cgroup() or not _alive(held)
    ):
        discard(held)
        held = None
    _offer = held
    try:
        yield
    finally:
        _offer = None
        if held is not None and held.go is not None:  # not taken
            discard(held)
        elif held is not None and held.taken:
            log.info("Task process forked ahead of its task (rtx prestart)", pid=held.pid)


def _take_offer() -> Prestarted | None:
    global _offer
    offer, _offer = _offer, None
    return offer


def _alive(held: Prestarted) -> bool:
    try:
        pid, _status = os.waitpid(held.pid, os.WNOHANG)
    except ChildProcessError:
        return False
    if pid:
        held.pid = -1  # reaped here: discard must not signal the number again
        return False
    return True


@contextlib.contextmanager
def _substituted(offer: Prestarted) -> Iterator[None]:
    """Inside start(): its socketpair() calls get the child's pairs, its os.fork() the child's pid."""
    real_socketpair, real_fork = supervisor.socketpair, os.fork
    waiting = list(offer.pairs)

    def socketpair(*args: Any, **kwargs: Any) -> Pair:
        if args or kwargs or not waiting:
            return real_socketpair(*args, **kwargs)
        pair = waiting.pop(0)
        offer.handed.append(pair)
        return pair

    def let_go(pid: int) -> int:
        # In the supervisor: its copy of the child's end of the requests channel. start() leaves its
        # own to the garbage collector, yet this module still refers to it, and while it is open the
        # supervisor never reads EOF there, so it would wait for its task forever.
        if pid and len(offer.handed) > 2:
            offer.handed[2][0].close()
        offer.pairs, offer.handed = [], []
        return pid

    def fork() -> int:
        os.fork = real_fork
        if waiting or len(offer.handed) != 4:  # start() asked otherwise than it did when mirrored
            discard(offer)
            return let_go(real_fork())
        try:
            _send_start(offer)
        except OSError:  # it died since offered() looked (EPIPE): this task gets a fork of its own
            discard(offer)
            return let_go(real_fork())
        offer.taken = True  # logged once the task is over: a log event costs ~0.3 ms of its start
        return let_go(offer.pid)

    supervisor.socketpair = socketpair
    os.fork = fork
    try:
        yield
    finally:
        supervisor.socketpair = real_socketpair
        os.fork = real_fork


def _send_start(offer: Prestarted) -> None:
    title = ""
    with contextlib.suppress(ImportError):
        from setproctitle import getproctitle

        title = getproctitle()
    data = json.dumps({"environ": dict(os.environ), "title": title}).encode()
    fd, offer.go = offer.go, None
    assert fd is not None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def discard(held: Prestarted | None = None) -> None:
    """Kill and reap a waiting child (the spare's own when ``held`` is None) and close what only it
    used. Sockets already handed to start() are start()'s."""
    global _held
    if held is None:
        held, _held = _held, None
        if held is None:
            return
    if held.go is not None:
        with contextlib.suppress(OSError):
            os.close(held.go)
        held.go = None
    if held.pid > 0:
        with contextlib.suppress(OSError):
            os.kill(held.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(held.pid, 0)
        held.pid = -1
    _close([pair for pair in held.pairs if pair not in held.handed])


def _close(pairs: list[Pair], *fds: int) -> None:
    for pair in pairs:
        for end in pair:
            end.close()
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
