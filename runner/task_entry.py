"""What runs first in every task process the runner's fork server forks.

Kept free of Airflow imports so the runner's own process never loads Airflow; the fork server
preloads the task module (``runner.task_process``, which imports Airflow's supervisor) instead.

``RTX_TASK_ENTRY=module:function`` replaces the Airflow task with another function of the same
signature. It exists for rtx's own tests and benchmarks (a task that only records its start, sleeps
or exits with a given code); production runners leave it unset.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, MutableMapping

import psutil

from runner.cgroups.join import JOIN_KEY, join, kill_members

DEFAULT_ENTRY = "runner.task_process:run"

# Never handed to a task: the runner's own database URL, and systemd's notify socket (the tasks
# are not the service).
PRIVATE_ENV = ("RTX_DATABASE_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# Every variable that carries rtx's or Airflow's metadata database credentials. Airflow 3 tasks reach
# the database only through the Execution API, so none is handed to a task unless the operator allows
# it by name (``task_env_allow``). ``AIRFLOW_CONN_*`` are the DAGs' own connections: left alone.
DATABASE_ENV = (
    "RTX_DATABASE_URL",
    *(
        f"{base}{form}"
        for base in (
            "AIRFLOW__RUNTIME_EXECUTOR__DATABASE_URL",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
            "AIRFLOW__CORE__SQL_ALCHEMY_CONN",  # Airflow's pre-2.3 section, still read by rtx's settings
        )
        for form in ("", "_CMD", "_SECRET")
    ),
    "PGPASSWORD",  # libpq's own: a password for rtx's connection when the URL has none
)


def allowed_names(allow: str) -> set[str]:
    """``task_env_allow`` ("NAME,NAME") as a set; RTX_DATABASE_URL can never be allowed."""
    return {name.strip() for name in allow.split(",") if name.strip()} - {"RTX_DATABASE_URL"}


def drop_database_env(environ: MutableMapping[str, str], allow: str = "") -> list[str]:
    """Remove the database credentials from ``environ`` (the runner's own, before its fork server
    starts: a forked task's ``/proc/self/environ`` is its fork server's start-up environment, which
    no ``os.environ.pop`` in the task can clean). Returns the names removed."""
    keep = allowed_names(allow)
    dropped = [name for name in DATABASE_ENV if name in environ and name not in keep]
    for name in dropped:
        del environ[name]
    return dropped


# True while a spare runs a task after which it waits for another (not its last): what the task's
# supervisor prepares for later tasks (runner.dag_cache) is worth preparing only then.
more_tasks_follow = False

TaskFunction = Callable[[str, dict[str, str], "str | None", str], None]


def entry_point() -> str:
    return os.environ.get("RTX_TASK_ENTRY") or DEFAULT_ENTRY


def preload_modules() -> list[str]:
    """What the fork server imports once: the task module, and this module, which every spare runs
    (``wait_and_run``). Left out, each spare imports it (and ``runner.cgroups``) after its fork, which
    doubled pickup p50 in ``make bench-pickup`` (8 -> 15-30 ms)."""
    return [entry_point().split(":", 1)[0], __name__]


def resolve(entry: str) -> TaskFunction:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name or "run")


def wait_and_run(conn, runner_alive) -> None:
    """A spare process (protocol: runner.spares): wait for a task on ``conn``, run it, and either exit
    (the runner said it is the last one) or report its exit code on ``conn`` and wait for the next.
    EOF on ``conn`` (the runner retired this spare, or died) ends it without running anything."""
    global more_tasks_follow
    baseline = _Baseline()
    watching = False
    module = None  # the task module: its optional ``between_tasks()`` and ``retire()`` hooks
    while True:
        try:
            entry, workload_json, env, server, proctitle, last = conn.recv()
        except (EOFError, OSError):
            _hook(module, "retire")
            return
        cgroup = env.pop(JOIN_KEY, None)
        if cgroup:
            # First act: the task's cgroup (--isolation cgroup), so everything it forks inherits it.
            # Such a task is always the spare's last (runner.spares): it never leaves the cgroup.
            try:
                join(cgroup)
            except OSError as exc:
                _record_error(env.get("RTX_ALLOCATION_ID"), RuntimeError(f"could not join its cgroup: {exc}"))
                raise SystemExit(1) from None
        if not watching:
            _watch_runner(runner_alive, cgroup)
            watching = True
        more_tasks_follow = not last
        if last:
            conn.close()
            run(entry, workload_json, env, server, proctitle)  # its exit code is this process's
            return
        code = run_reporting(entry, workload_json, env, server, proctitle)
        module = sys.modules.get(entry.partition(":")[0])  # imported by now (resolve)
        clean = baseline.restore()
        try:
            conn.send((code, baseline.growth_mb(), clean))
        except OSError:
            return
        # While the runner handles the report: what the task left in this process moves to the
        # collector's permanent generation, as the fork server's imports did (runner.task_process),
        # so the next task's forked child neither walks those objects nor copies their pages.
        gc.collect()
        gc.freeze()
        _hook(module, "between_tasks")  # runner.task_process: fork the next task process now


def _hook(module, name: str) -> None:
    hook = getattr(module, name, None)
    if hook is not None:
        with contextlib.suppress(Exception):
            hook()


def run_reporting(entry: str, workload_json: str, env: dict[str, str], server: str | None, title: str) -> int:
    """``run`` for a spare that lives on: the exit code the process would have exited with."""
    try:
        run(entry, workload_json, env, server, title)
    except SystemExit as exc:  # the code as multiprocessing's own bootstrap would turn it into one
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a process: traceback, code 1
        traceback.print_exc()
        return 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return 0


class _Baseline:
    """What a spare was before its first task, put back after each task (``restore``), so nothing
    of one task (its environment, which carries its token; its signal handlers, timers, title,
    working directory, umask) is seen by the next task run in the same process. The process group
    stays the spare's own (``run`` makes it leader once; a second ``setpgid`` changes nothing)."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.handlers = {}
        for sig in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError, TypeError):
                handler = signal.getsignal(sig)
                if handler is not None:
                    self.handlers[sig] = handler
        self.title = _proctitle()
        self.rss_mb = _rss_mb()

    def restore(self) -> bool:
        """Put the spare back as it was; False when the task left processes behind (killed now), so
        the spare must not be reused."""
        os.environ.clear()  # unsetenv for each, so /proc/self/environ of later children is clean too
        os.environ.update(self.environ)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.handlers.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                if signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        os.umask(self.umask)
        module = sys.modules.get("setproctitle")  # loaded by the task (Airflow's run_workload), if at all
        if module is not None and self.title:
            module.setproctitle(self.title)
        leftovers = descendants(os.getpid())
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        return not leftovers

    def growth_mb(self) -> int:
        """How much this process's resident memory grew since it was a fresh spare."""
        return max(0, _rss_mb() - self.rss_mb)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``, children before theirs, from ``/proc/<pid>/task/*/children``.

    Asked after every task a spare runs. ``psutil.Process.children`` reads ``/proc/<n>/stat`` of
    every process on the host to build its parent map: 0.6 ms on a quiet host, and under a burst
    of 32 tasks (300+ processes) 1.5 % of everything sampled in a runner's tree (py-spy, fanout_256).
    The kernel's own lists cost microseconds. Where they do not exist (a kernel without
    CONFIG_PROC_CHILDREN), psutil. Either way a process that left the tree (double fork) is not
    seen, as before."""
    if not os.path.exists(f"/proc/{pid}/task"):
        return []
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        return []
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # exited meanwhile
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def _rss_mb() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (OSError, ValueError, IndexError):
        return psutil.Process().memory_info().rss // 2**20


def _proctitle() -> str:
    """The spare's own command line, which a task's ``setproctitle`` overwrites."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _watch_runner(runner_alive, cgroup: str | None = None) -> None:
    """Kill this task's whole process tree when the runner process dies.

    ``runner_alive`` is the read end of a pipe whose only writer is the runner: EOF means the runner
    is gone (SIGKILL, crash). Its tasks must die with it, or they would keep running while the
    allocator declares them lost and Airflow retries them elsewhere: a task twice at once.
    Airflow's supervisor puts the task in a process group of its own, so the tree is walked, not
    just this process group. With ``--isolation cgroup`` (``cgroup``: the files it joined) every
    process in the task's cgroup dies too, even one that left the tree.
    """

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            runner_alive.recv()
        if cgroup:
            kill_members(cgroup)
        kill_tree(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="rtx-runner-watch", daemon=True).start()


def kill_tree(pid: int, sig: signal.Signals) -> None:
    """Signal a process and every descendant (children first looked up, then signalled)."""
    try:
        root = psutil.Process(pid)
        victims = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)


def run(entry: str, workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    """Child entry point: own process group, clean environment, then the task function."""
    # A process group of its own (the runner signals the whole tree with killpg(pid)), but not a
    # session of its own: with the kernel's autogroup scheduling (sched_autogroup_enabled, on by
    # default in Debian's kernels) every session is a CPU group of its own, so setsid() gave each
    # task as much CPU as the whole api-server. A burst of 32 tasks starved the api-server (mean
    # Execution API latency 0.4-0.9 s instead of 50 ms) and every task waited on it; Airflow's own
    # supervisor uses setpgid for the same reason.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in PRIVATE_ENV:
        os.environ.pop(name, None)
    os.environ.update(env)
    try:
        resolve(entry)(workload_json, env, server, proctitle)
    except Exception as exc:
        # e.g. an Airflow this runner cannot run: the runner puts this line in the failure reason
        _record_error(env.get("RTX_ALLOCATION_ID"), exc)
        raise


def error_file(allocation_id: str) -> str:
    """Where a task process that raised before (or instead of) Airflow's supervisor leaves its
    last error line for the runner."""
    return os.path.join(tempfile.gettempdir(), f"rtx-task-{allocation_id}.error")


def _record_error(allocation_id: str | None, exc: BaseException) -> None:
    if not allocation_id:
        return
    lines = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    with contextlib.suppress(OSError):
        fd = os.open(error_file(allocation_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(line[:500])


def take_error(allocation_id: str) -> str | None:
    """The runner's side: the error line a task process left (removed once read), if any."""
    path = error_file(allocation_id)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            line = f.read(500).strip()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        os.unlink(path)
    return line or None
