"""What differs between the supported Airflow versions (runtime_executor.airflow_compat).

``make test-compat`` runs this file under every supported Airflow; ``make test`` under the main one.
"""

from __future__ import annotations

import multiprocessing
import tomllib
import uuid
from pathlib import Path

import pytest

from runner import task_entry
from runner.service import describe_exit
from runtime_executor import airflow_compat as compat

REPO = Path(__file__).resolve().parents[2]


def test_the_supported_range_is_the_one_pyproject_states():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"apache-airflow{compat.SUPPORTED_AIRFLOW}" in deps


def test_the_installed_airflow_is_supported_and_its_features_are_found():
    assert compat.version_problem() is None
    minor = tuple(int(p) for p in compat.AIRFLOW_VERSION.split(".")[:2])
    # by feature, and each feature where the version that has it says it is
    newer = minor >= (3, 2)
    assert compat.HAS_CALLBACKS is newer
    assert compat.PRE_ASSIGNS_EXTERNAL_ID is newer
    if compat.HAS_CALLBACKS:
        key = compat.callback_key("0b1c")
        assert str(key) == "0b1c" and type(key) is (str if compat.CallbackKey is str else compat.CallbackKey)
    assert compat.airflow_stats() is not None


@pytest.mark.parametrize("installed", ["3.0.6", "3.4.0", "4.0.0"])
def test_a_version_outside_the_range_fails_executor_start_with_one_line(clean_env, monkeypatch, installed):
    from runtime_executor.executor import RuntimeExecutor

    monkeypatch.setattr(compat, "AIRFLOW_VERSION", installed)
    with pytest.raises(RuntimeError) as info:
        RuntimeExecutor().start()
    message = str(info.value)
    assert "\n" not in message
    assert installed in message and compat.SUPPORTED_AIRFLOW in message


def test_a_task_process_that_fails_before_the_supervisor_names_its_error():
    """The runner's failure reason carries the task process's last error line, not just its exit code."""
    allocation_id = str(uuid.uuid4())
    env = {"RTX_ALLOCATION_ID": allocation_id}
    child = multiprocessing.get_context("fork").Process(
        target=task_entry.run, args=("rtx_no_such_module:run", "{}", env, None, "test")
    )
    child.start()
    child.join(30)
    assert child.exitcode == 1
    error = task_entry.take_error(allocation_id)
    assert error == "ModuleNotFoundError: No module named 'rtx_no_such_module'"
    assert task_entry.take_error(allocation_id) is None  # read once, then gone
    assert describe_exit(1, None, error=error) == (
        "failed",
        "task process exited with code 1: ModuleNotFoundError: No module named 'rtx_no_such_module'",
    )


def test_the_fork_server_preloads_what_every_spare_runs(monkeypatch):
    # A spare runs task_entry.wait_and_run: imported in the fork server once, not in each spare after its fork.
    monkeypatch.setenv("RTX_TASK_ENTRY", "bench.noop_task:run")
    assert task_entry.preload_modules() == ["bench.noop_task", "runner.task_entry"]
    monkeypatch.delenv("RTX_TASK_ENTRY")
    assert task_entry.preload_modules() == ["runner.task_process", "runner.task_entry"]
