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

The workload JSON, which holds the task's token, reaches the child through the fork server's pipe,
never argv.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys

from runtime_executor.airflow_compat import WORKLOAD_ADAPTER, run_workload

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


def warm() -> None:
    """Warm the fork server. Each step only saves work: one that fails (an older Airflow without
    that function, a bad CA setting) is skipped, and the task then does it, with Airflow's own error."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for step in (_warm_caches, _warm_listeners):
        with contextlib.suppress(Exception):
            step()
    gc.collect()
    gc.freeze()


def run(workload_json: str, env: dict[str, str], server: str | None, proctitle: str) -> None:
    workload = _WORKLOAD.validate_json(workload_json)
    code = run_workload(workload, server=server, proctitle=proctitle)
    sys.exit(code or 0)


warm()
