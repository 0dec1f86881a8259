"""The Airflow task: run one workload under Airflow's own task supervisor.

The runner's fork server imports this module once, so every task process starts as a fork of a warm
interpreter, never a fresh one. Importing it therefore also *warms* the fork server with what every
task process would otherwise redo on its own, whatever its DAG (measured with py-spy over a burst of
no-op tasks, see docs/performance.md):

* the task runner's DAG parse imports ``airflow.dag_processing.dagbag``, which maps every ORM model
  with SQLAlchemy: about 40 % of a no-op task's CPU when each task does it afresh. LocalExecutor's
  workers inherit it from the scheduler;
* process-wide caches: the API client's SSL context (loading the system CA store), the host's
  FQDN (a resolver call the supervisor and the task each made), the user name, and the listener
  manager (which loads the plugins);
* the standard provider's operators and ``@task`` decorator, which most DAGs use;
* then ``gc.freeze()``: what is loaded now moves to the permanent generation, so the collector of a
  forked task neither walks it nor writes to (and so copies) its pages.

It also makes Airflow's supervisor notice its task process's exit at once (``_wake_on_task_exit``),
lets a spare that runs many tasks parse each DAG file once for all of them (``runner.dag_cache``),
and fork the next task process while it waits for the next task (``runner.prestart``), then take
the copy-on-write faults that fork leaves to the next task's supervisor set-up (``_copy_setup_pages``).

The workload JSON, which holds the task's token, reaches the child through the fork server's pipe,
never argv.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import os
import selectors
import sys

from runner import prestart, task_entry
from runner.dag_cache import DagCache, parse_shape
from runtime_executor.airflow_compat import WORKLOAD_ADAPTER, is_task, run_workload

_WORKLOAD = WORKLOAD_ADAPTER  # the workload union of the installed Airflow (3.1 to 3.3)

# Imported by every task process; optional ones (a provider may be absent) are skipped if missing.
WARM_MODULES = (
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
)
OPTIONAL_WARM_MODULES = (
    "airflow.dag_processing.dagbag",  # 3.2+; 3.1 has its DagBag in airflow.models.dagbag
    "airflow.models.dagbag",
    "airflow.providers.standard.decorators.python",
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.bash",
    # what every task process still imported after its fork (py-spy over fanout_256, ~8 ms a task):
    "airflow.sdk.definitions.decorators",  # ``from airflow.sdk import task`` and its collection
    "airflow.sdk.definitions.asset.metadata",
    "airflow.sdk.definitions.connection",
    "airflow.dag_processing.bundles.local",  # the dags-folder bundle
    "jinja2.ext",  # template rendering's environment
    "setproctitle",
)


def _warm_caches() -> None:
    """Process-wide caches every task fills: filled once here, every fork inherits them."""
    from airflow.sdk.api import client

    client.Client._get_ssl_context_cached(client.API_SSL_CA_FILE_PATH, client.API_SSL_CERT_PATH)
    client.get_hostname()  # the FQDN (a resolver call, cached), asked by the supervisor and the task
    client.getuser()


def _warm_listeners() -> None:
    from airflow.sdk.listener import get_listener_manager

    get_listener_manager()  # loads the plugins' listeners (entry points, plugins folder); cached


class _ExitWatch:
    """A pidfd of the task process: readable once it has exited and can be reaped (Linux 5.3+)."""

    def __init__(self, pid: int) -> None:
        self._fd: int | None = os.pidfd_open(pid)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("closed")
        return self._fd

    @staticmethod
    def readable(_watch: object) -> bool:
        return False  # no more to read: the supervisor unregisters it and checks the exit

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _wake_on_task_exit() -> None:
    """Airflow's supervisor learns of its task's exit only when a select() on the task's sockets
    returns: it reads them to EOF, then polls the exit. When the last EOF comes a moment before the
    exit can be reaped (the process is still being torn down, more likely on a loaded host), its
    next select() has no socket left and sleeps its whole timeout, ``[workers]
    min_heartbeat_interval`` (5 s), before it looks again. Measured on fanout_256 (bench.airflow):
    6-12 % of no-op tasks ended 5.0-5.6 s after their last log line, under LocalExecutor too
    (4 %); each holds a slot, and with rtx the outcome, for those 5 s. So the supervisor's selector
    also watches a pidfd of the task process, which becomes readable exactly when the exit can be
    reaped. Only in rtx's task processes (the fork server imports this module); skipped where the
    supervisor has no such loop or the kernel no pidfd, which leaves Airflow's own behaviour, as
    does ``RTX_TASK_EXIT_WAKE=0`` in the runner's environment (for a comparison, or should a future
    Airflow's loop not take it)."""
    if os.environ.get("RTX_TASK_EXIT_WAKE", "1") == "0":
        return
    from airflow.sdk.execution_time.supervisor import ActivitySubprocess

    original = ActivitySubprocess._monitor_subprocess
    if getattr(original, "rtx_wakes_on_exit", False) or not hasattr(os, "pidfd_open"):
        return

    def monitor(self: ActivitySubprocess) -> None:
        watch = None
        with contextlib.suppress(Exception):  # no pidfd (old kernel, no such pid): Airflow's own wait
            watch = _ExitWatch(self.pid)
            unregister = self.selector.unregister
            self.selector.register(watch, selectors.EVENT_READ, (watch.readable, unregister))
        try:
            original(self)
        finally:
            if watch is not None:
                watch.close()

    monitor.rtx_wakes_on_exit = True  # type: ignore[attr-defined]
    ActivitySubprocess._monitor_subprocess = monitor


DAG_CACHE: DagCache | None = None  # set by warm() where the installed Airflow's parse allows it


def _cache_parsed_dags() -> None:
    """Airflow's task parse takes the DAG from the spare's ``DagCache`` where it has one
    (runner.dag_cache); ``RTX_DAG_CACHE=0`` (``--no-dag-cache``) leaves every task to parse its own."""
    global DAG_CACHE
    from airflow.sdk.execution_time import task_runner

    original = task_runner.parse
    shape = parse_shape(original)
    if shape is None or getattr(original, "rtx_dag_cache", False):
        return  # an Airflow whose parse this cache does not know: each task parses, as before
    cache = DagCache(
        importlib.import_module(shape[0]),
        shape[1],
        task_runner.DagBundlesManager,
        enabled=os.environ.get("RTX_DAG_CACHE", "1") != "0",  # written by rtx-runner serve from its settings
    )

    def parse(what, log):
        entry = cache.lookup(what.bundle_info, what.dag_rel_path)
        if entry is None:
            return original(what, log)
        if entry.bag is None:  # the spare could not keep a parse of this file: why, in the task's log
            log.info("DAG file parsed by the task (rtx --dag-cache could not)", reason=entry.reason[:300])
            return original(what, log)
        with cache.serving(entry) as served:
            ti = original(what, log)
        if served:
            log.info(
                "DAG file parsed by this task's supervisor, before the task (rtx --dag-cache)",
                dag_file=os.fspath(what.dag_rel_path),
                parsed_s_ago=round(served[0], 1),
            )
        return ti

    parse.rtx_dag_cache = True  # type: ignore[attr-defined]
    task_runner.parse = parse
    DAG_CACHE = cache


def warm() -> None:
    """Warm the fork server. Each step only saves work: one that fails (an older Airflow without
    that function, a bad CA setting) is skipped, and the task then does it, with Airflow's own error."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for step in (_warm_caches, _warm_listeners, _wake_on_task_exit, _cache_parsed_dags, prestart.install):
        with contextlib.suppress(Exception):
            step()
    gc.collect()
    gc.freeze()


def _cache_generation() -> int | None:
    return DAG_CACHE.generation if DAG_CACHE is not None else None


def between_tasks() -> None:
    """Called by a spare that reported a task and waits for another (runner.task_entry)."""
    # raising (e.g. EAGAIN): task_entry carries on, and the next task forks as always
    if prestart.prestart(marker=_cache_generation()) is not None:
        _copy_setup_pages()


def _copy_setup_pages() -> None:
    """Run the task-independent part of the supervisor's set-up once, right after the fork ahead.

    The child forked ahead shares every page of this spare until one of the two writes it. The next
    task's supervisor set-up (its API client, the task log's processors, the secrets backends)
    writes some 550 of them (reference counts, allocator pools), each a copy-on-write fault (~3 us
    here) on that task's path to its start. Done now, while the spare waits, the same writes copy
    those pages before the task comes (chain_20: the spare's stage from its workload to the API's
    start 5.7 -> 4.8 ms p50; idle spares waiting with a child hold those pages; docs/performance.md). Nothing here sends a request or opens a file; a step that fails is
    skipped (the task does it for real)."""
    from airflow.sdk.api.client import Client
    from airflow.sdk.execution_time import supervisor

    def client() -> None:
        Client(base_url="http://localhost", token="").close()  # the same code whatever the URL

    def task_log() -> None:
        import structlog
        from airflow.sdk.log import logging_processors

        processors = logging_processors(json_output=True)
        structlog.wrap_logger(
            structlog.BytesLogger(io.BytesIO()), processors=processors, logger_name="task"
        ).bind()

    for step in (client, task_log, supervisor.ensure_secrets_backend_loaded):
        with contextlib.suppress(Exception):
            step()


def retire() -> None:
    """Called by a spare that leaves without another task."""
    prestart.discard()


def run(workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    workload = _WORKLOAD.validate_json(workload_json)
    task = is_task(workload)
    if DAG_CACHE is not None and task_entry.more_tasks_follow and task:
        DAG_CACHE.prepare(workload.bundle_info, workload.dag_rel_path)  # never raises
    # a child forked before a parse lacks it: then the supervisor forks, as always
    with prestart.offered(task, marker=_cache_generation()):
        code = run_workload(workload, server=server, proctitle=proctitle)
    sys.exit(code or 0)


warm()
