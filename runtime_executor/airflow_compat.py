"""Everything rtx needs from Airflow that differs between the supported versions, in one place.

rtx supports ``SUPPORTED_AIRFLOW`` (the range in pyproject.toml; tests/unit/test_airflow_compat.py
checks that they agree). What differs is detected by *feature*, never by version string:

=========================================  ======  ======  ======
feature                                     3.1     3.2     3.3
=========================================  ======  ======  ======
callback workloads (``ExecuteCallback``)    no      yes     yes
callback key                                 -      str     CallbackKey(id=...)
scheduler pre-assigns external_executor_id  no      yes     yes
``BaseExecutor.run_workload``               no      no      yes
executor workload union                     All     All     ExecutorWorkload
``DBDagBag.get_dag``                        _get_dag        get_dag
=========================================  ======  ======  ======

Only the shim (``runtime_executor.executor``) and the task process (``runner.task_process``) import
this module; it imports Airflow, so the shared parts never do. Airflow's main branch is reworking
the executor interface (workload queues keyed by workload type, ``supported_workload_types``):
those changes belong here.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import airflow
from airflow.executors import workloads
from airflow.executors.base_executor import BaseExecutor
from pydantic import TypeAdapter

SUPPORTED_AIRFLOW = ">=3.1,<3.4"
_MIN, _BELOW = (3, 1), (3, 4)

AIRFLOW_VERSION: str = airflow.__version__

# -- workloads ---------------------------------------------------------------------------------------
ExecuteTask = workloads.ExecuteTask
ExecuteCallback: type | None = getattr(workloads, "ExecuteCallback", None)  # 3.2+
HAS_CALLBACKS = ExecuteCallback is not None
# what an executor may be handed: 3.3 names it ExecutorWorkload, 3.1 and 3.2 only have All
WORKLOAD_ADAPTER: TypeAdapter = TypeAdapter(getattr(workloads, "ExecutorWorkload", None) or workloads.All)

# the scheduler writes external_executor_id in the same UPDATE that sets QUEUED (3.2+)
PRE_ASSIGNS_EXTERNAL_ID = hasattr(BaseExecutor, "pre_assigns_external_executor_id")

try:  # 3.3: a frozen dataclass; 3.2: an alias of str; 3.1: no callbacks at all
    from airflow.models.callback import CallbackKey
except ImportError:  # pragma: no cover - 3.1
    CallbackKey = None  # type: ignore[assignment,misc]


def version_problem() -> str | None:
    """One line naming the installed and the supported versions, or None if supported."""
    from packaging.version import Version

    release = Version(AIRFLOW_VERSION).release[:2]
    if _MIN <= release < _BELOW:
        return None
    return (
        f"rtx supports apache-airflow {SUPPORTED_AIRFLOW} (3.1, 3.2, 3.3); "
        f"the installed apache-airflow is {AIRFLOW_VERSION}"
    )


def is_task(workload: Any) -> bool:
    return isinstance(workload, ExecuteTask)


def is_callback(workload: Any) -> bool:
    return ExecuteCallback is not None and isinstance(workload, ExecuteCallback)


def workload_key(workload: Any) -> Any:
    if is_task(workload):
        return workload.ti.key
    key = getattr(workload, "key", None)  # 3.3's ExecuteCallback has one; 3.2's only its callback id
    return key if key is not None else callback_key(workload.callback.id)


def callback_key(callback_id: str) -> Any:
    if CallbackKey is None or CallbackKey is str:
        return str(callback_id)
    return CallbackKey(id=str(callback_id))


def announce_external_id(executor: BaseExecutor, key: Any, allocation_id: str) -> None:
    """Without a pre-assigned id (3.1), tell the scheduler the allocation id at once, the way
    Celery did: a QUEUED event sets ``external_executor_id``, so a restarted scheduler can adopt."""
    if PRE_ASSIGNS_EXTERNAL_ID:
        return
    from airflow.utils.state import TaskInstanceState

    executor.event_buffer[key] = (TaskInstanceState.QUEUED, allocation_id)


def dag_of_version(dag_version_id: Any, session: Any) -> Any:
    """The serialized DAG of one DAG version (``DBDagBag.get_dag`` in 3.2+, ``_get_dag`` in 3.1)."""
    from airflow.models.dagbag import DBDagBag

    bag = DBDagBag()
    getter = getattr(bag, "get_dag", None) or bag._get_dag
    return getter(uuid.UUID(str(dag_version_id)), session=session)  # the column type wants a UUID (.hex)


# -- the task process ---------------------------------------------------------------------------------
def run_workload(workload: Any, *, server: str | None, proctitle: str) -> int:
    """Run one workload under Airflow's own supervisor; its exit code."""
    if hasattr(BaseExecutor, "run_workload"):  # 3.3
        return BaseExecutor.run_workload(workload, server=server, proctitle=proctitle) or 0
    try:
        from setproctitle import setproctitle

        setproctitle(proctitle)
    except ImportError:
        pass
    if server is None:
        server = _execution_api_url()
    if is_task(workload):
        from airflow.sdk.execution_time.supervisor import supervise

        kwargs: dict[str, Any] = {}
        if "sentry_integration" in inspect.signature(supervise).parameters:
            kwargs["sentry_integration"] = getattr(workload, "sentry_integration", "") or ""
        return (
            supervise(
                ti=workload.ti,
                bundle_info=workload.bundle_info,
                dag_rel_path=workload.dag_rel_path,
                token=workload.token,
                server=server,
                log_path=workload.log_path,
                **kwargs,
            )
            or 0
        )
    if is_callback(workload):  # 3.2: runs in this process, as LocalExecutor does
        import structlog
        from airflow.executors.workloads.callback import execute_callback_workload

        ok, error = execute_callback_workload(workload.callback, structlog.get_logger("rtx.callback"))
        if not ok:
            raise RuntimeError(error or "callback failed")
        return 0
    raise ValueError(f"rtx cannot run a {type(workload).__name__} workload")


def _execution_api_url() -> str:
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="/")
    if base_url.startswith("/"):
        base_url = f"http://localhost:8080{base_url}"
    return conf.get("core", "execution_api_server_url", fallback=f"{base_url.rstrip('/')}/execution/")


def airflow_stats() -> Any:
    """The scheduler-side Stats that BaseExecutor initialises (3.2+ moved it)."""
    try:
        from airflow.observability.stats import Stats  # 3.2, 3.3
    except ImportError:  # 3.1
        from airflow.stats import Stats
    return Stats
